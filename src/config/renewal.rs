//! `renewal:` and `provisioning:`: the background certificate work.

use serde_yaml::Value;

use crate::certs::maintain::{ProvisioningSettings, RenewalSettings};
use crate::config::raw;
use crate::config::values::{opt_duration, secs, Errors};

pub fn build_renewal(raw: &raw::Renewal, errs: &mut Errors<'_>) -> Option<RenewalSettings> {
    let fraction = match &raw.fraction {
        None => Some(1.0 / 3.0),
        Some(v) => match v.as_f64() {
            Some(f) if f > 0.0 && f < 1.0 => Some(f),
            _ => {
                errs.push(
                    "renewal.fraction",
                    Some(v),
                    "expected a number between 0 and 1, such as 0.33",
                );
                None
            }
        },
    };
    let check_interval = opt_duration(
        errs,
        "renewal.check_interval",
        &raw.check_interval,
        secs(300),
    );
    Some(RenewalSettings {
        fraction: fraction?,
        check_interval: check_interval?,
    })
}

pub fn build_provisioning(
    raw: &raw::Provisioning,
    errs: &mut Errors<'_>,
) -> Option<ProvisioningSettings> {
    let enabled = match &raw.enabled {
        None => Some(true),
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            errs.push("provisioning.enabled", Some(v), "expected true or false");
            None
        }
    };
    let orders_per_3h = raw.orders_per_3h.as_ref().map_or(Some(300), |v| {
        errs.uint("provisioning.orders_per_3h", v, 1, 1_000_000)
            .map(|n| n as u32)
    });
    Some(ProvisioningSettings {
        enabled: enabled?,
        orders_per_3h: orders_per_3h?,
    })
}
