//! `certs show NAME`: one certificate in detail.

use crate::cli::certs::ctx::{CertsError, Ctx, Outcome};
use crate::cli::certs::inspect::inspect;
use crate::cli::certs::x509::print_details;
use crate::domain::Domain;

pub async fn show(ctx: &Ctx, name: &Domain) -> Result<Outcome, CertsError> {
    let Some(entry) = inspect(&ctx.store, name).await? else {
        println!(
            "no certificate stored for {name} (looked in {})",
            ctx.store.dir_for(name).display()
        );
        return Ok(Outcome::Refused);
    };
    print_details(&ctx.store, name, &entry);
    Ok(Outcome::Done)
}
