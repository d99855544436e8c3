//! Building and running the operator process: certificates, the receipt CA,
//! the caches, the HTTPS listeners (webhooks and control endpoint, on every
//! replica), the probe and metrics listener, webhook registration, and the
//! controllers behind leader election.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tollgate_wire::server::ServerLimits;

use crate::cache::ClusterCache;
use crate::control::{ControlMetrics, ControlState};
use crate::controllers::{ControlCaPublication, ControllerSettings};
use crate::failures::Failures;
use crate::leader::{LeaderElector, LeaseSettings};
use crate::registration::{self, WebhookRegistration};
use crate::tls::{FileCertificate, Lifetimes, SelfSignedCa, ServingCertResolver};
use crate::{receipt_ca, serve, webhooks};

/// Where serving certificates come from.
#[derive(Debug, Clone)]
pub enum CertificateSource {
    /// The operator's own CA in the Secret `tollgate-webhook-ca`.
    SelfSigned(Lifetimes),
    /// `tls.crt`, `tls.key` (and `ca.crt`) from a directory, e.g. cert-manager's.
    Files(PathBuf),
}

/// Everything the operator process needs to know.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    pub namespace: String,
    pub webhook_listen: SocketAddr,
    pub control_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// Out of cluster: the URL the API server calls the webhooks at.
    pub webhook_url: Option<String>,
    /// Appended to the webhook configuration names (tests sharing a cluster).
    pub webhook_name_suffix: String,
    /// The control endpoint URL injected into gateways.
    pub control_url: String,
    pub gateway_image: String,
    pub recorder_url: Option<String>,
    /// The recorder's CA (PEM), published to gateways with the control CA.
    pub recorder_ca_pem: Option<String>,
    pub cluster_dns: Vec<std::net::IpAddr>,
    pub leader_election_namespace: String,
    pub identity: String,
    pub certificates: CertificateSource,
    /// Extra names for the serving certificate (hosts of URLs and listeners).
    pub extra_names: Vec<String>,
    pub max_waiters: usize,
    /// Flags that change the control endpoint's bounds (the defaults leave
    /// room for `max_waiters` long-polls).
    pub control_limits: tollgate_wire::server::LimitFlags,
    /// When the receipt CA rotates.
    pub receipt_ca_rotation: receipt_ca::RotationPolicy,
}

/// Parses `500ms`, `30s`, `10m`, `24h` or `365d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: ms, s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    let d = match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    }?;
    if d.is_zero() {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(d)
}

/// The host part of a URL (`https://host:port/...`), IPv6 brackets removed.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// Calls `load` every 2 s until it succeeds; `None` when `shutdown` fires first.
async fn retry_until_loaded<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    load: impl Fn() -> F,
) -> Option<T> {
    loop {
        match load().await {
            Ok(value) => return Some(value),
            Err(e) => tracing::error!(error = %e, "loading {what}; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// Runs the operator until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    settings: OperatorSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut registry = Registry::default();
    let control_metrics = ControlMetrics::default();
    control_metrics.register(&mut registry);
    let admission_metrics = webhooks::AdmissionMetrics::default();
    admission_metrics.register(&mut registry);
    let failures = Failures::default();
    failures.register(&mut registry);
    let ca_rotations = Counter::default();
    let certs_issued = Counter::default();
    registry.register(
        "tollgate_operator_ca_rotations",
        "Rotations of the operator's webhook CA made by this replica",
        ca_rotations.clone(),
    );
    registry.register(
        "tollgate_operator_serving_certificates_issued",
        "Serving certificates this replica issued",
        certs_issued.clone(),
    );

    // Bind first: a port in use is a startup error, not a retry loop.
    let webhook_listener = TcpListener::bind(settings.webhook_listen)
        .await
        .with_context(|| format!("binding the webhook listener {}", settings.webhook_listen))?;
    let control_listener = TcpListener::bind(settings.control_listen)
        .await
        .with_context(|| format!("binding the control listener {}", settings.control_listen))?;
    let metrics_listener = TcpListener::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener {}", settings.metrics_listen))?;

    let ready = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(registry);
    let probes = serve::probes_router(ready.clone(), registry.clone());
    tokio::spawn(serve::serve_http(
        metrics_listener,
        probes,
        shutdown.clone(),
    ));

    // Certificates.
    let resolver = ServingCertResolver::new();
    let (bundle_tx, bundle_rx) = watch::channel::<Option<String>>(None);
    let bundle_tx = Arc::new(bundle_tx);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let registration_mode = match (&settings.certificates, &settings.webhook_url) {
        (CertificateSource::Files(_), None) => WebhookRegistration::None,
        (_, Some(url)) => WebhookRegistration::Url {
            base_url: url.clone(),
            name_suffix: settings.webhook_name_suffix.clone(),
        },
        (CertificateSource::SelfSigned(_), None) => WebhookRegistration::CaBundleOnly,
    };
    match &settings.certificates {
        CertificateSource::SelfSigned(lifetimes) => {
            let names = crate::tls::serving_names(&settings.namespace, &settings.extra_names);
            let ca = SelfSignedCa {
                secrets: secrets.clone(),
                lifetimes: *lifetimes,
                names,
                resolver: resolver.clone(),
                bundle: bundle_tx.clone(),
                serving: None,
                rotations: ca_rotations,
                issued: certs_issued,
            };
            tokio::spawn(ca.run(shutdown.clone()));
        }
        CertificateSource::Files(dir) => {
            let files = FileCertificate {
                dir: dir.clone(),
                resolver: resolver.clone(),
                bundle: bundle_tx.clone(),
            };
            tokio::spawn(files.run(shutdown.clone()));
        }
    }
    let tls = resolver.server_config()?;

    // The receipt CA: needed before any key certificate is issued.
    let Some(receipt_ca) = retry_until_loaded("the receipt CA", &mut shutdown, || {
        receipt_ca::load_or_create(&secrets)
    })
    .await
    else {
        return Ok(());
    };
    tracing::info!(state = ?receipt_ca, "receipt CA loaded");
    // The caller key: every config document carries it.
    let Some(caller_key) = retry_until_loaded("the caller key", &mut shutdown, || {
        crate::cluster_secrets::load_or_create_caller_key(&secrets)
    })
    .await
    else {
        return Ok(());
    };
    // The Lease holder publishes its TrustAnchor and rotates it
    // (`receipt_ca::keep_rotated`): a replica that only serves must not
    // write an anchor from a state it read before a rotation step.

    // Leader election: the controllers and the webhooks' audit sweep run on
    // the Lease holder only.
    let elector = LeaderElector::new(
        client.clone(),
        LeaseSettings::new(
            settings.leader_election_namespace.clone(),
            settings.identity.clone(),
        ),
    );

    // The one cache, the control endpoint and the webhooks.
    let cache = ClusterCache::start(&client, &settings.namespace, &failures);
    let control = Arc::new(ControlState {
        client: client.clone(),
        cache: cache.clone(),
        caller_key,
        waiters: Arc::new(Semaphore::new(settings.max_waiters.max(1))),
        metrics: control_metrics,
    });
    let control_router = crate::control::router(control);
    let webhook_router = webhooks::start(
        client.clone(),
        &cache,
        webhooks::WebhookSettings {
            injection: tollgate_admission::InjectionSettings {
                gateway_image: settings.gateway_image.clone(),
                operator_namespace: settings.namespace.clone(),
                control_url: settings.control_url.clone(),
                recorder_url: settings.recorder_url.clone(),
                cluster_dns: settings.cluster_dns.clone(),
            },
        },
        admission_metrics,
        elector.leading(),
    )
    .await;
    tokio::spawn(serve::serve_https(
        webhook_listener,
        tls.clone(),
        webhook_router,
        ServerLimits::CONTROL,
        shutdown.clone(),
    ));
    // Every gateway holds a long-poll here: room for all of them and more.
    let control_limits = settings.control_limits.apply(ServerLimits {
        max_connections: settings
            .max_waiters
            .saturating_add(ServerLimits::CONTROL.max_connections),
        max_in_flight: settings
            .max_waiters
            .saturating_add(ServerLimits::CONTROL.max_in_flight),
        ..ServerLimits::CONTROL
    });
    tokio::spawn(serve::serve_https(
        control_listener,
        tls,
        control_router,
        control_limits,
        shutdown.clone(),
    ));
    tokio::spawn(registration::keep_webhooks_registered(
        client.clone(),
        registration_mode,
        settings.namespace.clone(),
        bundle_rx.clone(),
        shutdown.clone(),
    ));

    // Ready once a certificate is served and the caches have listed.
    {
        let ready = ready.clone();
        let resolver = resolver.clone();
        let caches = cache.readiness();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let now = resolver.has_certificate() && caches.is_ready();
                if now != ready.swap(now, Ordering::AcqRel) {
                    tracing::info!(ready = now, "readiness changed");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }

    // Controllers (and the audit sweep above), on the leader only.
    let controller_settings = ControllerSettings {
        operator_namespace: settings.namespace.clone(),
        recorder_url: settings.recorder_url.clone(),
        quota_refresh: Duration::from_secs(30),
        receipt_ca_rotation: settings.receipt_ca_rotation,
    };
    let leader_client = client.clone();
    let leader_cache = cache.clone();
    let control_ca = ControlCaPublication {
        bundle: bundle_rx,
        recorder_ca_pem: settings.recorder_ca_pem.clone(),
    };
    let mut leader_shutdown = shutdown.clone();
    let result = elector
        .run(
            || {
                crate::controllers::run(
                    leader_client.clone(),
                    controller_settings.clone(),
                    leader_cache.clone(),
                    failures.clone(),
                    control_ca.clone(),
                )
            },
            async move {
                let _ = leader_shutdown.changed().await;
            },
        )
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "leader election or controllers failed");
        return Err(e.into());
    }
    // The elector returns on shutdown; give listeners a moment to drain.
    let _ = shutdown.changed().await;
    ready.store(false, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("365d"),
            Ok(Duration::from_secs(365 * 86_400))
        );
        for bad in ["", "10", "s", "0s", "1.5h", "10y", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_host("https://127.0.0.1:8443").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:9/x").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://tollgate-operator.ns.svc/p?q").as_deref(),
            Some("tollgate-operator.ns.svc")
        );
        assert_eq!(url_host("no-scheme"), None);
    }
}
