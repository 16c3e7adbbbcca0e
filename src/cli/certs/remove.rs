//! `certs remove NAME`: delete a stored certificate.

use crate::certs::store::Store;
use crate::cli::certs::ctx::{CertsError, Ctx, Outcome};
use crate::domain::Domain;

pub async fn remove(ctx: &Ctx, name: &Domain) -> Result<Outcome, CertsError> {
    if ctx.store.remove(name).await? {
        println!("removed {}", ctx.store.dir_for(name).display());
        println!(
            "a running edge keeps serving its in-memory copy of {name} until it restarts or {name} is no longer allowed"
        );
        Ok(Outcome::Done)
    } else {
        println!(
            "no certificate stored for {name} (looked in {})",
            ctx.store.dir_for(name).display()
        );
        Ok(Outcome::Refused)
    }
}
