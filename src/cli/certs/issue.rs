//! `certs issue NAME`: have the running edge issue a certificate (its limits apply).

use std::time::{Duration, Instant};

use crate::allow::explain::{explain, Verdict};
use crate::cli::certs::ctx::{CertsError, Ctx, Outcome};
use crate::cli::certs::inspect::{datetime, inspect, usable};
use crate::cli::certs::show::show;
use crate::cli::certs::trigger::{trigger, Patience, TriggerError};
use crate::cli::certs::x509::print_details;
use crate::domain::Domain;

pub async fn issue(ctx: &Ctx, name: &Domain, timeout: Duration) -> Result<Outcome, CertsError> {
    let allow = ctx.allow_list()?;
    match explain(&allow, name).await {
        Verdict::Allowed { source, .. } => println!("{name} is allowed by {}", source.label()),
        Verdict::Denied { why } => {
            println!("{name} is not allowed: {}; nothing issued", why.join("; "));
            return Ok(Outcome::Refused);
        }
        Verdict::Unknown { errors, .. } => {
            println!(
                "cannot tell whether {name} is allowed ({}); nothing issued",
                errors.join("; ")
            );
            return Ok(Outcome::Refused);
        }
    }
    if let Some(ck) = usable(&ctx.store, name).await {
        println!(
            "{name} already has a valid certificate (until {} UTC); nothing to issue",
            datetime(ck.not_after)
        );
        return show(ctx, name).await;
    }
    let edge = ctx.edge()?;
    if !edge.is_listening() {
        println!("{}", ctx.not_running(edge.addr));
        return Ok(Outcome::Refused);
    }
    let started = Instant::now();
    match trigger(
        &ctx.store,
        edge,
        name,
        timeout,
        Patience::RetryOnceAfterTimeout,
    )
    .await
    {
        Ok(_) => {}
        Err(TriggerError::NotListening(addr)) => {
            println!("{}", ctx.not_running(addr));
            return Ok(Outcome::Refused);
        }
        Err(e) => {
            println!("{name}: {e}");
            return Ok(Outcome::Refused);
        }
    }
    match inspect(&ctx.store, name).await? {
        Some(entry) if entry.status.is_usable() => {
            println!(
                "issued {name} in {:.1?} by the edge at {}",
                started.elapsed(),
                edge.addr
            );
            print_details(&ctx.store, name, &entry);
            Ok(Outcome::Done)
        }
        _ => {
            println!(
                "the edge at {} served {name}, but {} holds no valid certificate: the edge serves a copy from memory (a removed certificate stays there until restart), or it runs with another data_dir than {}",
                edge.addr,
                ctx.store.dir_for(name).display(),
                ctx.path.display()
            );
            Ok(Outcome::Refused)
        }
    }
}
