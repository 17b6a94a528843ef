//! Shared test helper: the macro that runs a test body on every enabled backend.

/// Instantiates `$body(&Device)` once per backend: a module `<name>` with the test `flex`
/// always, and `ndarray` / `wgpu` / `vulkan` when those features are on.
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
                #[cfg(feature = "vulkan")]
                #[test]
                fn vulkan() {
                    $body(&burn::tensor::Device::vulkan(burn::tensor::DeviceKind::default()).autodiff());
                }
            }
        )*
    };
}

pub mod json;
pub mod rng;
