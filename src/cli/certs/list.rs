//! `certs list`: a table of stored certificates, with dates, status and whether each name is
//! still allowed.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::allow::explain::{explain, Verdict};
use crate::certs::store::Store;
use crate::cli::certs::ctx::{CertsError, Ctx, Outcome};
use crate::cli::certs::inspect::{datetime, inspect};
use crate::cli::certs::progress::Progress;
use crate::util::time::unix_now;

/// `list` shows a progress counter on stderr beyond this many names.
const PROGRESS_ABOVE: usize = 50;
/// Decisions asked at once by `list` (the database pool bounds its own share further).
const DECISION_CONCURRENCY: usize = 8;

pub async fn list(ctx: &Ctx) -> Result<Outcome, CertsError> {
    let names = ctx.store.list().await?;
    if names.is_empty() {
        println!(
            "no certificates stored in {}",
            ctx.config.data_dir.join("certs").display()
        );
        return Ok(Outcome::Done);
    }
    let allow = ctx.allow_list()?;
    let slots = Arc::new(Semaphore::new(DECISION_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (index, name) in names.iter().enumerate() {
        let (allow, slots, name) = (allow.clone(), slots.clone(), name.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire().await;
            (index, explain(&allow, &name).await)
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; names.len()];
    let mut progress = Progress::new(names.len(), names.len() > PROGRESS_ABOVE);
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (index, v) = joined.map_err(|e| CertsError::Task(e.to_string()))?;
        if let Some(slot) = verdicts.get_mut(index) {
            *slot = Some(v);
        }
        done += 1;
        progress.tick(done, "decisions");
    }
    progress.finish();

    let now = unix_now();
    let mut rows = vec![[
        "NAME".to_string(),
        "ISSUER".into(),
        "NOT BEFORE".into(),
        "NOT AFTER".into(),
        "DAYS LEFT".into(),
        "STATUS".into(),
        "DECISION".into(),
    ]];
    for (name, v) in names.iter().zip(verdicts) {
        let decision = v.map_or("unknown: not asked".to_string(), |v| v.to_string());
        let entry = inspect(&ctx.store, name).await?;
        let row = match entry {
            // Removed between `list` and `load`.
            None => continue,
            Some(e) => {
                let issuer = e
                    .stored
                    .meta
                    .as_ref()
                    .map_or("-".to_string(), |m| m.issuer.clone());
                match &e.cert {
                    Ok(ck) => [
                        name.to_string(),
                        issuer,
                        datetime(ck.not_before),
                        datetime(ck.not_after),
                        ((ck.not_after - now).div_euclid(86_400)).to_string(),
                        e.status.to_string(),
                        decision,
                    ],
                    Err(_) => [
                        name.to_string(),
                        issuer,
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        e.status.to_string(),
                        decision,
                    ],
                }
            }
        };
        rows.push(row);
    }
    print_table(&rows);
    Ok(Outcome::Done)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}
