//! `certs warm`: have the running edge issue every allowed name without a valid certificate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::allow::database::PgAllowList;
use crate::allow::pattern::NamePattern;
use crate::cli::certs::ctx::{CertsError, Ctx, Outcome};
use crate::cli::certs::inspect::usable;
use crate::cli::certs::progress::Progress;
use crate::cli::certs::trigger::{trigger, Patience};
use crate::domain::Domain;
use crate::metrics::Metrics;

/// Every name to warm: exact platform domains, plus the database's list when one is set.
pub async fn allowed_names(ctx: &Ctx) -> Result<Vec<Domain>, CertsError> {
    let mut names: Vec<Domain> = ctx
        .config
        .allow
        .platform_domains
        .iter()
        .filter_map(|p| match p {
            NamePattern::Exact(d) => Some(d.clone()),
            NamePattern::Below(_) => None,
        })
        .collect();
    if let Some(db) = &ctx.config.allow.database {
        let pg = PgAllowList::new(db, Arc::new(Metrics::new()?)).map_err(CertsError::ListNames)?;
        names.extend(pg.all_names().await.map_err(CertsError::ListNames)?);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

pub async fn warm(ctx: &Ctx, concurrency: usize, timeout: Duration) -> Result<Outcome, CertsError> {
    let names = allowed_names(ctx).await?;
    if ctx.config.allow.ask.is_some() {
        println!(
            "note: the ask URL cannot list its names; they are issued on their first handshake"
        );
    }
    let skipped = ctx
        .config
        .allow
        .platform_domains
        .iter()
        .filter(|p| matches!(p, NamePattern::Below(_)))
        .count();
    if skipped > 0 {
        println!("note: {skipped} wildcard platform pattern(s) name no single host; not warmed");
    }
    let mut todo = Vec::new();
    let mut already = 0usize;
    for name in &names {
        if usable(&ctx.store, name).await.is_some() {
            already += 1;
        } else {
            todo.push(name.clone());
        }
    }
    let mut issued = 0usize;
    let mut failed: Vec<(Domain, String)> = Vec::new();
    if !todo.is_empty() {
        let edge = ctx.edge()?;
        if !edge.is_listening() {
            println!("{}", ctx.not_running(edge.addr));
            return Ok(Outcome::Refused);
        }
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for name in todo.iter().cloned() {
            let (store, slots) = (ctx.store.clone(), slots.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire().await;
                let result = match trigger(&store, edge, &name, timeout, Patience::UntilDeadline)
                    .await
                {
                    Ok(_) if usable(&store, &name).await.is_some() => Ok(()),
                    Ok(_) => Err(
                        "served, but not stored (the edge serves a copy from memory)".to_string(),
                    ),
                    Err(e) => Err(e.to_string()),
                };
                (name, result)
            });
        }
        let mut progress = Progress::new(todo.len(), true);
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            let (name, result) = joined.map_err(|e| CertsError::Task(e.to_string()))?;
            done += 1;
            progress.tick(done, name.as_str());
            match result {
                Ok(()) => issued += 1,
                Err(why) => failed.push((name, why)),
            }
        }
        progress.finish();
    }
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, why) in &failed {
        println!("failed {name}: {why}");
    }
    println!(
        "warm: {} allowed name(s): {issued} issued, {already} already valid, {} failed",
        names.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        Outcome::Done
    } else {
        Outcome::Refused
    })
}
