//! `certs remove NAME`: delete a stored certificate, and the running edge's copy in memory.

use std::time::Duration;

use crate::certs::store::Store;
use crate::cli::certs::admin::{ask, AdminError};
use crate::cli::certs::ctx::{CertsError, Ctx, Outcome};
use crate::domain::Domain;

pub async fn remove(ctx: &Ctx, name: &Domain) -> Result<Outcome, CertsError> {
    if ctx.store.remove(name).await? {
        println!("removed {}", ctx.store.dir_for(name).display());
        match ask(&ctx.config.data_dir, &format!("evict {name}"), Duration::from_secs(5)) {
            Ok(answer) if answer.starts_with("ok") => println!(
                "the running edge forgot its copy: the next handshake for {name} gets a new certificate"
            ),
            Ok(answer) => println!("the running edge answered: {answer}"),
            Err(AdminError::NotRunning(_)) => {
                println!("no edge is running with this data_dir: nothing else to forget")
            }
            Err(e) => println!(
                "{e}; a running edge may keep serving its copy of {name} until it restarts"
            ),
        }
        Ok(Outcome::Done)
    } else {
        println!(
            "no certificate stored for {name} (looked in {})",
            ctx.store.dir_for(name).display()
        );
        Ok(Outcome::Refused)
    }
}
