//! The Grafana dashboard (`deploy/grafana/tenant-edge.json`) and the Prometheus alert rules
//! (`deploy/prometheus/tenant-edge-alerts.yml`) against a running edge: every
//! `tenant_edge_*` metric they reference must be exported by the edge's `/metrics`, with the
//! labels and label values they select on. Also checks the shape of both files (the alerts that
//! must exist, the fields Prometheus and Alertmanager need, the panels and template variables)
//! and that each PromQL expression is at least plausible: balanced brackets and strings,
//! counters and histograms used as range vectors, Grafana variables defined.
//!
//! `scripts/check-rules.sh` adds Prometheus' own parser and the alert unit tests when
//! `promtool` is installed; this test needs nothing but the edge.

use crate::common::*;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/tenant-edge.json"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/tenant-edge-alerts.yml"
);
const PREFIX: &str = "tenant_edge_";

/// Alerts that must exist: name, severity, metrics the expression must use.
const REQUIRED_ALERTS: &[(&str, &str, &[&str])] = &[
    (
        "TenantEdgeConnectionCapReached",
        "critical",
        &["tenant_edge_connections_closed_total"],
    ),
    (
        "TenantEdgeCertificateExpiringSoon",
        "warning",
        &[
            "tenant_edge_certificate_soonest_expiry_timestamp_seconds",
            "tenant_edge_certificates_cached",
        ],
    ),
    (
        "TenantEdgeIssuanceFailures",
        "warning",
        &["tenant_edge_issuances_total"],
    ),
    (
        "TenantEdgeAcmeOrdersInvalid",
        "warning",
        &["tenant_edge_acme_orders_total"],
    ),
    (
        "TenantEdgeRenewalFailures",
        "warning",
        &["tenant_edge_renewals_total"],
    ),
    (
        "TenantEdgeAllowListDatabaseErrors",
        "warning",
        &["tenant_edge_database_queries_total"],
    ),
    (
        "TenantEdgeStaleDecisionsInUse",
        "warning",
        &["tenant_edge_decisions_total"],
    ),
    (
        "TenantEdgeFailClosedRefusals",
        "critical",
        &["tenant_edge_decisions_total"],
    ),
    (
        "TenantEdgeAskEndpointMisconfigured",
        "critical",
        &["tenant_edge_ask_misconfigured_total"],
    ),
    (
        "TenantEdgeIssuancesRateLimited",
        "warning",
        &["tenant_edge_issuances_limited_total"],
    ),
    (
        "TenantEdgeUpstreamPoolDown",
        "critical",
        &[
            "tenant_edge_upstream_backends_healthy",
            "tenant_edge_upstream_backends",
        ],
    ),
    (
        "TenantEdgeUpstreamPoolDegraded",
        "warning",
        &[
            "tenant_edge_upstream_backends_healthy",
            "tenant_edge_upstream_backends",
        ],
    ),
    (
        "TenantEdgeHandshakeFailureRatioHigh",
        "warning",
        &["tenant_edge_tls_handshakes_total"],
    ),
    (
        "TenantEdgeUpstream5xxRatioHigh",
        "warning",
        &["tenant_edge_upstream_requests_total"],
    ),
    (
        "TenantEdgeLatencyP95High",
        "warning",
        &["tenant_edge_request_duration_seconds_bucket"],
    ),
    ("TenantEdgeDown", "critical", &[]),
];

/// Metrics the dashboard must chart (the rows of the dashboard).
const REQUIRED_IN_DASHBOARD: &[&str] = &[
    "tenant_edge_certificates_cached",
    "tenant_edge_certificate_soonest_expiry_timestamp_seconds",
    "tenant_edge_issuances_total",
    "tenant_edge_issuance_duration_seconds_bucket",
    "tenant_edge_acme_orders_total",
    "tenant_edge_acme_order_duration_seconds_bucket",
    "tenant_edge_issuances_limited_total",
    "tenant_edge_renewals_total",
    "tenant_edge_provision_queue",
    "tenant_edge_provisioned_total",
    "tenant_edge_decisions_total",
    "tenant_edge_database_queries_total",
    "tenant_edge_ask_misconfigured_total",
    "tenant_edge_tls_handshakes_total",
    "tenant_edge_tls_handshakes_completed_total",
    "tenant_edge_upstream_requests_total",
    "tenant_edge_request_duration_seconds_bucket",
    "tenant_edge_upstream_retries_total",
    "tenant_edge_upstream_backends_healthy",
    "tenant_edge_upstream_backends",
    "tenant_edge_http_requests_total",
];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

// ------------------------------------------------------------------------------------------
// The exposition of a running edge.

/// Sample names of one scrape, with the labels and values seen for each, and the family types.
#[derive(Debug, Default)]
struct Exported {
    series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    types: BTreeMap<String, String>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut e = Exported::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    e.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let end = line.find(|c: char| !is_ident(c)).unwrap_or(line.len());
            let name = &line[..end];
            let labels = e.series.entry(name.to_string()).or_default();
            if line[end..].starts_with('{') {
                let chars: Vec<char> = line[end..].chars().collect();
                let (matchers, _) = parse_matchers(&chars, 0)
                    .unwrap_or_else(|err| panic!("unparsable sample line {line:?}: {err}"));
                for m in matchers {
                    labels.entry(m.label).or_default().insert(m.value);
                }
            }
        }
        e
    }

    /// The exposition type of the family that sample name `name` belongs to.
    fn kind(&self, name: &str) -> Option<&str> {
        if let Some(kind) = self.types.get(name) {
            return Some(kind);
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find_map(|base| self.types.get(base))
            .map(String::as_str)
    }

    fn all_labels(&self) -> BTreeSet<&str> {
        self.series
            .values()
            .flat_map(|labels| labels.keys().map(String::as_str))
            .chain(TARGET_LABELS.iter().copied())
            .collect()
    }
}

/// Scrape until the per-pool series of pool `app` are there (the upstream service creates them
/// as it starts, which may be just after the metrics listener answers).
fn scrape_settled(setup: &EdgeSetup) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = setup.scrape();
        let ready = [
            "tenant_edge_upstream_backends_healthy",
            "tenant_edge_upstream_requests_total",
            "tenant_edge_request_duration_seconds_bucket",
        ]
        .iter()
        .all(|name| {
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) && l.contains("pool=\"app\""))
        });
        if ready || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------------------------------
// A small PromQL scanner: enough to find metric names, their selectors and grouping labels.

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Index just past the string literal that starts at `i` (`"…"`, `'…'` or `` `…` ``).
fn skip_string(s: &[char], i: usize) -> Result<usize, String> {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() {
        if s[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if s[j] == quote {
            return Ok(j + 1);
        }
        j += 1;
    }
    Err(format!("unterminated string starting at offset {i}"))
}

/// The text of the string literal that starts at `i`, unescaped, and the index past it.
fn read_string(s: &[char], i: usize) -> Result<(String, usize), String> {
    if i >= s.len() || !matches!(s[i], '"' | '\'' | '`') {
        return Err(format!("expected a string at offset {i}"));
    }
    let end = skip_string(s, i)?;
    let mut out = String::new();
    let mut chars = s[i + 1..end - 1].iter();
    while let Some(&c) = chars.next() {
        if c == '\\' && s[i] != '`' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(&other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    Ok((out, end))
}

fn read_ident(s: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while j < s.len() && is_ident(s[j]) {
        j += 1;
    }
    (s[i..j].iter().collect(), j)
}

#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// The label matchers of the selector whose `{` is at `i`, and the index past its `}`.
fn parse_matchers(s: &[char], i: usize) -> Result<(Vec<Matcher>, usize), String> {
    let mut out = Vec::new();
    let mut j = i + 1;
    loop {
        j = skip_ws(s, j);
        if j < s.len() && s[j] == '}' {
            return Ok((out, j + 1));
        }
        let (label, after) = read_ident(s, j);
        if label.is_empty() {
            return Err(format!("expected a label name at offset {j}"));
        }
        j = skip_ws(s, after);
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| s[j..].iter().take(op.len()).copied().eq(op.chars()))
            .ok_or_else(|| format!("expected a matcher operator after {label:?}"))?;
        j = skip_ws(s, j + op.len());
        let (value, after) = read_string(s, j)?;
        out.push(Matcher {
            label,
            op: op.to_string(),
            value,
        });
        j = skip_ws(s, after);
        match s.get(j) {
            Some(',') => j += 1,
            Some('}') => return Ok((out, j + 1)),
            _ => return Err(format!("expected ',' or '}}' at offset {j}")),
        }
    }
}

/// One `tenant_edge_*` name in an expression.
#[derive(Debug, Default)]
struct Reference {
    name: String,
    matchers: Vec<Matcher>,
    /// Followed by a range (`[5m]`): used as a range vector.
    range: bool,
    /// The label of `label_values(name, label)` (a Grafana variable query).
    label_values: Option<String>,
}

#[derive(Debug, Default)]
struct Scan {
    references: Vec<Reference>,
    /// Labels in `by`, `without`, `on`, `ignoring`, `group_left` and `group_right` lists.
    grouping: Vec<String>,
    /// Grafana variables (`$name`, `${name}`).
    variables: Vec<String>,
}

fn scan(expr: &str) -> Result<Scan, String> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Scan::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&s, i)?;
        } else if is_ident(c) {
            let start = i;
            let (word, after) = read_ident(&s, i);
            i = after;
            if word.starts_with(PREFIX) {
                let mut r = Reference {
                    name: word,
                    ..Reference::default()
                };
                let mut j = skip_ws(&s, i);
                if s.get(j) == Some(&'{') {
                    let (matchers, end) = parse_matchers(&s, j)?;
                    r.matchers = matchers;
                    i = end;
                    j = skip_ws(&s, end);
                }
                r.range = s.get(j) == Some(&'[');
                let before: String = s[..start].iter().collect();
                if before.trim_end().ends_with("label_values(") && s.get(j) == Some(&',') {
                    let (label, _) = read_ident(&s, skip_ws(&s, j + 1));
                    r.label_values = Some(label);
                }
                out.references.push(r);
            } else if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                let j = skip_ws(&s, i);
                if s.get(j) == Some(&'(') {
                    let close = s[j..]
                        .iter()
                        .position(|&c| c == ')')
                        .ok_or_else(|| format!("unclosed {word}( list"))?;
                    let list: String = s[j + 1..j + close].iter().collect();
                    out.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_string),
                    );
                    i = j + close + 1;
                }
            }
        } else {
            i += 1;
        }
    }
    // Variables anywhere, strings included (`instance=~"$instance"`).
    for at in (0..s.len()).filter(|&at| s[at] == '$') {
        let braced = s.get(at + 1) == Some(&'{');
        let (name, _) = read_ident(&s, at + 1 + usize::from(braced));
        if !name.is_empty() {
            out.variables.push(name);
        }
    }
    Ok(out)
}

/// Brackets balance and nest, and every string is closed.
fn balanced(expr: &str) -> Result<(), String> {
    let s: Vec<char> = expr.chars().collect();
    let mut stack = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            '"' | '\'' | '`' => {
                i = skip_string(&s, i)?;
                continue;
            }
            c @ ('(' | '[' | '{') => stack.push((c, i)),
            c @ (')' | ']' | '}') => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                match stack.pop() {
                    Some((open, _)) if open == want => {}
                    Some((open, at)) => {
                        return Err(format!(
                            "{c:?} at offset {i} closes {open:?} from offset {at}"
                        ))
                    }
                    None => return Err(format!("{c:?} at offset {i} closes nothing")),
                }
            }
            _ => {}
        }
        i += 1;
    }
    match stack.pop() {
        Some((open, at)) => Err(format!("{open:?} at offset {at} is never closed")),
        None => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------
// The files.

/// A PromQL text and where it came from (for messages).
struct Query {
    place: String,
    expr: String,
}

fn dashboard() -> Json {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn rules() -> Yaml {
    let text = std::fs::read_to_string(RULES).expect("read the alert rules");
    serde_yaml::from_str(&text).expect("the alert rules are YAML")
}

/// Every `expr`, `query` and `definition` string in the dashboard (panel targets, template
/// variable queries, nested row panels), with the title of the nearest enclosing object.
fn dashboard_queries(dashboard: &Json) -> Vec<Query> {
    fn walk(v: &Json, place: &str, out: &mut Vec<Query>) {
        match v {
            Json::Object(map) => {
                let place = map
                    .get("title")
                    .or_else(|| map.get("name"))
                    .and_then(Json::as_str)
                    .map_or_else(|| place.to_string(), |t| format!("{t:?}"));
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", Json::String(expr)) => out.push(Query {
                            place: format!("dashboard {place} {key}"),
                            expr: expr.clone(),
                        }),
                        _ => walk(value, &place, out),
                    }
                }
            }
            Json::Array(items) => items.iter().for_each(|item| walk(item, place, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "(top)", &mut out);
    out
}

/// Every rule of every group (alerting and recording).
fn rule_list(rules: &Yaml) -> Vec<&Yaml> {
    let groups = rules["groups"]
        .as_sequence()
        .expect("the rules file has a `groups` list");
    assert!(!groups.is_empty(), "no rule groups");
    groups
        .iter()
        .flat_map(|g| {
            assert!(
                g["name"].as_str().is_some(),
                "a group without a name: {g:?}"
            );
            g["rules"]
                .as_sequence()
                .unwrap_or_else(|| panic!("group {:?} has no `rules` list", g["name"]))
                .iter()
        })
        .collect()
}

fn rule_queries(rules: &Yaml) -> Vec<Query> {
    rule_list(rules)
        .into_iter()
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            Query {
                place: format!("rule {name}"),
                expr: r["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("rule {name} has no expr"))
                    .to_string(),
            }
        })
        .collect()
}

fn all_queries() -> Vec<Query> {
    let mut q = dashboard_queries(&dashboard());
    q.extend(rule_queries(&rules()));
    q
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

// ------------------------------------------------------------------------------------------
// Checks of one query against the exposition.

fn check_against(q: &Query, exported: &Exported, all_labels: &BTreeSet<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let scan = match scan(&q.expr) {
        Ok(scan) => scan,
        Err(e) => return vec![format!("{}: cannot scan {:?}: {e}", q.place, q.expr)],
    };
    for r in &scan.references {
        let Some(labels) = exported.series.get(&r.name) else {
            let hint = match exported.kind(&r.name) {
                Some("histogram") => " (a histogram: use _bucket, _sum or _count)",
                _ => "",
            };
            problems.push(format!(
                "{}: {} is not exported by the edge{hint}",
                q.place, r.name
            ));
            continue;
        };
        for m in &r.matchers {
            if TARGET_LABELS.contains(&m.label.as_str()) || m.value.contains('$') {
                continue;
            }
            let Some(values) = labels.get(&m.label) else {
                problems.push(format!(
                    "{}: {} has no label {:?} (it has {:?})",
                    q.place,
                    r.name,
                    m.label,
                    labels.keys().collect::<Vec<_>>()
                ));
                continue;
            };
            let wanted: Vec<&str> = match m.op.as_str() {
                "=" | "!=" if !m.value.is_empty() => vec![m.value.as_str()],
                // A plain alternation like "error|timeout": each branch is a value.
                "=~" | "!~"
                    if !m.value.is_empty()
                        && m.value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-|".contains(c)) =>
                {
                    m.value.split('|').collect()
                }
                _ => Vec::new(),
            };
            for w in wanted.into_iter().filter(|w| !values.contains(*w)) {
                problems.push(format!(
                    "{}: {}{{{}{}{:?}}}: the edge exports no {}={w:?} (values: {:?})",
                    q.place, r.name, m.label, m.op, m.value, m.label, values
                ));
            }
        }
        if let Some(label) = &r.label_values {
            if !labels.contains_key(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{}: label_values({}, {label}): no such label",
                    q.place, r.name
                ));
            }
        }
        let kind = exported.kind(&r.name);
        if matches!(kind, Some("counter" | "histogram")) && !r.range && r.label_values.is_none() {
            problems.push(format!(
                "{}: {} is a {} and must be used through rate()/increase() with a range",
                q.place,
                r.name,
                kind.unwrap_or_default()
            ));
        }
    }
    for label in &scan.grouping {
        if !all_labels.contains(label.as_str()) {
            problems.push(format!(
                "{}: grouping by {label:?}, a label no tenant_edge_ metric has",
                q.place
            ));
        }
    }
    problems
}

// ------------------------------------------------------------------------------------------
// Tests.

#[test]
fn every_metric_the_dashboard_and_rules_use_is_exported() {
    let setup = EdgeSetup::new();
    let (_up, up_addr) = upstream(setup.dir.path(), "app");
    let _edge = setup.start(&setup.config(&[up_addr], ""));
    let text = scrape_settled(&setup);
    let exported = Exported::parse(&text);
    let ours: Vec<&String> = exported
        .series
        .keys()
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    assert!(
        ours.len() >= 20,
        "the edge exports only {} tenant_edge_ series names:\n{text}",
        ours.len()
    );
    assert!(
        exported
            .series
            .get("tenant_edge_upstream_backends_healthy")
            .and_then(|l| l.get("pool"))
            .is_some_and(|pools| pools.contains("app")),
        "no per-pool series for pool app:\n{text}"
    );

    let all_labels = exported.all_labels();
    let queries = all_queries();
    let mut problems = Vec::new();
    let mut referenced = BTreeSet::new();
    for q in &queries {
        problems.extend(check_against(q, &exported, &all_labels));
        if let Ok(scan) = scan(&q.expr) {
            referenced.extend(scan.references.into_iter().map(|r| r.name));
        }
    }
    assert!(
        referenced.len() >= 15,
        "the files reference only {referenced:?}"
    );
    problems.sort();
    problems.dedup();
    let missing: BTreeSet<&str> = referenced
        .iter()
        .map(String::as_str)
        .filter(|n| !exported.series.contains_key(*n))
        .collect();
    assert!(
        problems.is_empty(),
        "the dashboard or the alert rules do not match what the edge exports\n\
         names referenced but not exported: {missing:?}\n{}\n\nexported: {ours:?}",
        problems.join("\n")
    );
}

#[test]
fn every_expression_is_plausible_promql() {
    let dashboard = dashboard();
    let variables: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let mut problems = Vec::new();
    let dashboard_queries = dashboard_queries(&dashboard);
    let rule_queries = rule_queries(&rules());
    for (q, from_dashboard) in dashboard_queries
        .iter()
        .map(|q| (q, true))
        .chain(rule_queries.iter().map(|q| (q, false)))
    {
        if q.expr.trim().is_empty() {
            problems.push(format!("{}: empty expression", q.place));
            continue;
        }
        if let Err(e) = balanced(&q.expr) {
            problems.push(format!("{}: {e} in {:?}", q.place, q.expr));
            continue;
        }
        let scan = match scan(&q.expr) {
            Ok(scan) => scan,
            Err(e) => {
                problems.push(format!("{}: {e} in {:?}", q.place, q.expr));
                continue;
            }
        };
        for var in &scan.variables {
            if !from_dashboard {
                problems.push(format!(
                    "{}: Grafana variable ${var} in a Prometheus rule",
                    q.place
                ));
            } else if !var.starts_with("__") && !variables.contains(var) {
                problems.push(format!("{}: undefined variable ${var}", q.place));
            }
        }
        if q.expr.contains("histogram_quantile") {
            let buckets = scan.references.iter().any(|r| r.name.ends_with("_bucket"));
            let by_le = scan.grouping.iter().any(|l| l == "le");
            if !buckets || !by_le {
                problems.push(format!(
                    "{}: histogram_quantile needs _bucket series aggregated by le: {:?}",
                    q.place, q.expr
                ));
            }
        }
    }
    // The scanner must see through a real expression (guards the checks above).
    let probe = scan(
        r#"sum by (pool, le) (rate(tenant_edge_x_bucket{pool=~"a|b", class!="5xx"}[5m])) / on (instance) group_left tenant_edge_y"#,
    )
    .unwrap();
    assert_eq!(probe.references.len(), 2);
    assert!(probe.references[0].range && !probe.references[1].range);
    assert_eq!(probe.references[0].matchers.len(), 2);
    assert_eq!(probe.grouping, ["pool", "le", "instance"]);
    assert!(balanced("sum(rate(x{a=\"(\"}[5m]))").is_ok());
    assert!(balanced("sum(rate(x[5m])").is_err());
    assert!(balanced("sum(rate(x[5m)))").is_err());
    assert!(balanced("x{a=\"b}").is_err());

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_rules_have_every_required_alert_and_the_fields_alertmanager_needs() {
    let rules = rules();
    let list = rule_list(&rules);
    let mut names = BTreeSet::new();
    let mut problems = Vec::new();
    for r in &list {
        let Some(name) = r["alert"].as_str() else {
            if r["record"].as_str().is_none() {
                problems.push(format!("a rule with neither alert nor record: {r:?}"));
            }
            continue;
        };
        if !names.insert(name.to_string()) {
            problems.push(format!("{name}: defined twice"));
        }
        if r["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
            problems.push(format!("{name}: no expr"));
        }
        match r["for"].as_str() {
            Some(d)
                if !d.is_empty()
                    && d.trim_end_matches(|c: char| c.is_ascii_alphabetic())
                        .chars()
                        .all(|c| c.is_ascii_digit())
                    && ["ms", "s", "m", "h", "d", "w", "y"]
                        .iter()
                        .any(|u| d.ends_with(u)) => {}
            other => problems.push(format!(
                "{name}: `for` missing or not a duration: {other:?}"
            )),
        }
        let severity = r["labels"]["severity"].as_str();
        if !matches!(severity, Some("critical" | "warning" | "info")) {
            problems.push(format!(
                "{name}: labels.severity must be critical, warning or info, not {severity:?}"
            ));
        }
        let summary = r["annotations"]["summary"].as_str().unwrap_or_default();
        let description = r["annotations"]["description"].as_str().unwrap_or_default();
        if summary.trim().is_empty() {
            problems.push(format!("{name}: no annotations.summary"));
        }
        if description.trim().is_empty() {
            problems.push(format!("{name}: no annotations.description"));
        }
        if !format!("{summary}{description}").contains("$labels.instance") {
            problems.push(format!(
                "{name}: neither summary nor description names {{{{ $labels.instance }}}}"
            ));
        }
        for text in [summary, description] {
            if text.matches("{{").count() != text.matches("}}").count() {
                problems.push(format!("{name}: unbalanced {{{{ }}}} in {text:?}"));
            }
        }
    }
    for (alert, severity, metrics) in REQUIRED_ALERTS {
        let Some(rule) = list.iter().find(|r| r["alert"].as_str() == Some(alert)) else {
            problems.push(format!("missing alert {alert}"));
            continue;
        };
        if rule["labels"]["severity"].as_str() != Some(severity) {
            problems.push(format!(
                "{alert}: severity {:?}, expected {severity}",
                rule["labels"]["severity"]
            ));
        }
        let expr = rule["expr"].as_str().unwrap_or_default();
        let used: BTreeSet<String> = scan(expr)
            .map(|s| s.references.into_iter().map(|r| r.name).collect())
            .unwrap_or_default();
        for m in *metrics {
            if !used.contains(*m) {
                problems.push(format!("{alert}: its expression does not use {m}"));
            }
        }
    }
    let down = list
        .iter()
        .find(|r| r["alert"].as_str() == Some("TenantEdgeDown"))
        .and_then(|r| r["expr"].as_str())
        .unwrap_or_default();
    if !down.contains(r#"up{job="tenant-edge"}"#) {
        problems.push(format!(
            "TenantEdgeDown must watch up{{job=\"tenant-edge\"}}: {down:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dashboard_has_its_panels_and_variables() {
    let d = dashboard();
    let mut problems = Vec::new();
    let schema = d["schemaVersion"].as_u64().unwrap_or(0);
    if schema < 39 {
        problems.push(format!("schemaVersion {schema} < 39"));
    }
    if d["title"].as_str().is_none_or(str::is_empty) || d["uid"].as_str().is_none() {
        problems.push("the dashboard needs a title and a uid".to_string());
    }

    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        other => problems.push(format!(
            "no Prometheus datasource variable `datasource`: {other:?}"
        )),
    }
    match var("instance") {
        Some(v) => {
            let query = v["query"]["query"].as_str().or(v["query"].as_str());
            if query != Some("label_values(tenant_edge_certificates_cached, instance)") {
                problems.push(format!("variable instance: query {query:?}"));
            }
            if v["datasource"]["uid"] != "${datasource}" {
                problems.push("variable instance must use ${datasource}".to_string());
            }
        }
        None => problems.push("no `instance` variable".to_string()),
    }

    let top = d["panels"].as_array().map_or(0, Vec::len);
    if top < 15 {
        problems.push(format!("only {top} panels"));
    }
    let panels = all_panels(&d);
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        if title.trim().is_empty() {
            problems.push(format!("a panel without a title: id {}", p["id"]));
        }
        if !ids.insert(p["id"].as_u64()) || p["id"].as_u64().is_none() {
            problems.push(format!("panel {title:?}: missing or duplicate id"));
        }
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64(), pos["w"].as_u64());
        if !matches!((x, w), (Some(x), Some(w)) if x + w <= 24 && w > 0)
            || pos["y"].as_u64().is_none()
            || pos["h"].as_u64().is_none()
        {
            problems.push(format!("panel {title:?}: bad gridPos {pos}"));
        }
        if p["type"] == "row" {
            continue;
        }
        if !titles.insert(title) {
            problems.push(format!("panel title {title:?} used twice"));
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "panel {title:?}: datasource is not ${{datasource}}"
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no targets"));
        }
        for t in &targets {
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("panel {title:?}: a target without expr"));
            }
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "panel {title:?}: a target's datasource is not ${{datasource}}"
                ));
            }
        }
    }
    let graphs = panels.iter().filter(|p| p["type"] != "row").count();
    if graphs < 15 {
        problems.push(format!("only {graphs} panels with queries"));
    }

    let used: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .filter_map(|q| scan(&q.expr).ok())
        .flat_map(|s| s.references.into_iter().map(|r| r.name))
        .collect();
    for m in REQUIRED_IN_DASHBOARD {
        if !used.contains(*m) {
            problems.push(format!("no panel charts {m}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The rows of the README's metrics table: (families, documented labels).
fn readme_metric_rows() -> Vec<(Vec<String>, BTreeSet<String>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Metrics")
        .nth(1)
        .expect("README has a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            let families = ticked(cells[1])
                .into_iter()
                .map(|f| {
                    if f.starts_with("process_") {
                        f
                    } else {
                        format!("{PREFIX}{f}")
                    }
                })
                .collect();
            (families, ticked(cells[2]).into_iter().collect())
        })
        .collect()
}

#[test]
fn the_readme_metrics_table_matches_what_metrics_exports() {
    let setup = EdgeSetup::new();
    let (_up, up_addr) = upstream(setup.dir.path(), "app");
    let _edge = setup.start(&setup.config(&[up_addr], ""));
    let exported = Exported::parse(&scrape_settled(&setup));
    let rows = readme_metric_rows();
    assert!(rows.len() >= 10, "{rows:?}");
    let documented: BTreeSet<&str> = rows
        .iter()
        .flat_map(|(f, _)| f.iter().map(String::as_str))
        .collect();
    let families: BTreeSet<&str> = exported
        .types
        .keys()
        .map(String::as_str)
        .filter(|n| n.starts_with(PREFIX) || n.starts_with("process_"))
        .collect();
    let undocumented: Vec<&&str> = families.difference(&documented).collect();
    let not_exported: Vec<&&str> = documented.difference(&families).collect();
    assert!(
        undocumented.is_empty() && not_exported.is_empty(),
        "README.md's metrics table and /metrics differ\n  exported, not in the table: {undocumented:?}\n  in the table, not exported: {not_exported:?}"
    );
    // Labels: each documented label is on one of its row's families, and every label a family
    // has is documented in its row.
    let labels_of = |family: &str| -> BTreeSet<String> {
        exported
            .series
            .iter()
            .filter(|(name, _)| {
                *name == family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family))
            })
            .flat_map(|(_, labels)| labels.keys().cloned())
            .filter(|l| l != "le")
            .collect()
    };
    let mut problems = Vec::new();
    for (families, labels) in &rows {
        let actual: BTreeSet<String> = families.iter().flat_map(|f| labels_of(f)).collect();
        for l in labels.difference(&actual) {
            problems.push(format!(
                "{families:?}: documented label `{l}` is not exported"
            ));
        }
        for l in actual.difference(labels) {
            problems.push(format!("{families:?}: label `{l}` is not documented"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
