//! Shared test helpers: the devices every backend-generic test runs on.
#![allow(dead_code)]

use burn::tensor::Device;

/// Every enabled backend as an autodiff device: flex always, ndarray and wgpu by feature.
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut v = vec![("flex", Device::flex().autodiff())];
    #[cfg(feature = "ndarray")]
    {
        #[allow(deprecated)]
        v.push(("ndarray", Device::ndarray().autodiff()));
    }
    #[cfg(feature = "wgpu")]
    {
        v.push(("wgpu", Device::wgpu(burn::tensor::DeviceKind::default()).autodiff()));
    }
    v
}

/// Instantiates `$body(&Device)` once per backend as separate tests: `<name>_flex` always,
/// `<name>_ndarray` / `<name>_wgpu` when those features are on.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident => $body:path;)*) => {
        $(
            mod $name {
                #[test]
                fn flex() {
                    $body(&burn::tensor::Device::flex().autodiff());
                }
                #[cfg(feature = "ndarray")]
                #[test]
                #[allow(deprecated)]
                fn ndarray() {
                    $body(&burn::tensor::Device::ndarray().autodiff());
                }
                #[cfg(feature = "wgpu")]
                #[test]
                fn wgpu() {
                    $body(&burn::tensor::Device::wgpu(burn::tensor::DeviceKind::default()).autodiff());
                }
            }
        )*
    };
}
