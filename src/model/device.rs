//! Which device a model runs on, as operators name it on the command line.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// `cpu`, `cuda`, `cuda:N`, or `auto` (the first GPU when this build has CUDA and one is present,
/// else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "auto" => Ok(Self::Auto),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => Ok(Self::Cuda(n.parse().with_context(|| {
                    format!("{s:?}: the GPU ordinal after cuda: must be a number")
                })?)),
                None => bail!("unknown device {s:?}: expected cpu, cuda, cuda:N or auto"),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceChoice {
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !cfg!(feature = "cuda") {
                    bail!("this rmr1 was built without CUDA: rebuild with --features cuda, or use --device cpu");
                }
                let device =
                    Device::new_cuda(ordinal).with_context(|| format!("opening GPU {ordinal}"))?;
                Ok(configured(device))
            }
            Self::Auto if cfg!(feature = "cuda") => match Device::new_cuda(0) {
                Ok(device) => Ok(configured(device)),
                Err(e) => {
                    tracing::warn!(error = %e, "no usable GPU; running on the CPU");
                    Ok(Device::Cpu)
                }
            },
            Self::Auto => Ok(Device::Cpu),
        }
    }
}

/// A freshly opened GPU set up for serving before anything is allocated on it.
fn configured(device: Device) -> Device {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = &device {
        crate::cuda::disable_event_tracking(dev);
    }
    device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_type() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!(DeviceChoice::Auto.open().is_ok());
    }
}
