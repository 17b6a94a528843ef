//! Devices chosen at run time: `--device` / `[run] device` and `[run] teacher_device`.
//!
//! ```text
//! cpu | flex          burn's flex CPU backend (always built; the default)
//! ndarray             burn's ndarray CPU backend            (feature `ndarray`)
//! wgpu[:N]            wgpu, any graphics API; N = discrete GPU index   (feature `wgpu`)
//! vulkan[:N]          wgpu with the Vulkan SPIR-V compiler             (feature `vulkan`)
//! cuda[:N]            CUDA, GPU N (default 0)                          (feature `cuda`)
//! ```
//!
//! A device whose feature was not built is an error naming the feature to build with.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// A device name as given on the command line or in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceSpec {
    kind: Kind,
    index: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flex,
    Ndarray,
    Wgpu,
    Vulkan,
    Cuda,
}

impl Kind {
    const ALL: [(&'static str, Kind); 6] = [
        ("cpu", Kind::Flex),
        ("flex", Kind::Flex),
        ("ndarray", Kind::Ndarray),
        ("wgpu", Kind::Wgpu),
        ("vulkan", Kind::Vulkan),
        ("cuda", Kind::Cuda),
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Flex => "cpu",
            Kind::Ndarray => "ndarray",
            Kind::Wgpu => "wgpu",
            Kind::Vulkan => "vulkan",
            Kind::Cuda => "cuda",
        }
    }
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self { kind: Kind::Flex, index: None }
    }
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => match i.parse::<usize>() {
                Ok(i) => (n, Some(i)),
                Err(_) => bail!("device `{s}`: the index after `:` must be a number"),
            },
            None => (s, None),
        };
        let lower = name.to_ascii_lowercase();
        let Some((_, kind)) = Kind::ALL.iter().find(|(n, _)| *n == lower) else {
            bail!("unknown device `{s}`: expected cpu, ndarray, wgpu[:N], vulkan[:N] or cuda[:N]");
        };
        if index.is_some() && matches!(kind, Kind::Flex | Kind::Ndarray) {
            bail!("device `{s}`: {} takes no index", kind.name());
        }
        Ok(Self { kind: *kind, index })
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}:{i}", self.kind.name()),
            None => f.write_str(self.kind.name()),
        }
    }
}

impl DeviceSpec {
    /// Whether this is the always-built CPU device.
    pub fn is_cpu(&self) -> bool {
        self.kind == Kind::Flex
    }

    /// The plain (no-autodiff) burn device.
    ///
    /// # Errors
    /// When the backend's cargo feature was not built.
    pub fn device(&self) -> Result<Device> {
        match self.kind {
            Kind::Flex => Ok(Device::flex()),
            Kind::Ndarray => ndarray(),
            Kind::Wgpu => wgpu(self.index),
            Kind::Vulkan => vulkan(self.index),
            Kind::Cuda => cuda(self.index.unwrap_or(0)),
        }
    }
}

fn not_built(device: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "device `{device}` is not built into this `kd`: rebuild with `cargo build --release -p \
         kd-cli --features {feature}`"
    )
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn gpu_kind(index: Option<usize>) -> burn::tensor::DeviceKind {
    match index {
        Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
        None => burn::tensor::DeviceKind::default(),
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
fn ndarray() -> Result<Device> {
    Ok(Device::ndarray())
}
#[cfg(not(feature = "ndarray"))]
fn ndarray() -> Result<Device> {
    Err(not_built("ndarray", "ndarray"))
}

#[cfg(feature = "wgpu")]
fn wgpu(index: Option<usize>) -> Result<Device> {
    Ok(Device::wgpu(gpu_kind(index)))
}
#[cfg(not(feature = "wgpu"))]
fn wgpu(_index: Option<usize>) -> Result<Device> {
    Err(not_built("wgpu", "wgpu"))
}

#[cfg(feature = "vulkan")]
fn vulkan(index: Option<usize>) -> Result<Device> {
    Ok(Device::vulkan(gpu_kind(index)))
}
#[cfg(not(feature = "vulkan"))]
fn vulkan(_index: Option<usize>) -> Result<Device> {
    Err(not_built("vulkan", "vulkan"))
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    Ok(Device::cuda(index))
}
#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device> {
    Err(not_built("cuda", "cuda"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for (s, printed) in [
            ("cpu", "cpu"),
            ("flex", "cpu"),
            ("wgpu", "wgpu"),
            ("vulkan:1", "vulkan:1"),
            ("CUDA:0", "cuda:0"),
            ("ndarray", "ndarray"),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), printed);
        }
        for bad in ["tpu", "cuda:x", "cpu:1", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert!(DeviceSpec::default().device().is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn an_unbuilt_backend_names_its_feature() {
        let e = "cuda:0".parse::<DeviceSpec>().unwrap().device().unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
