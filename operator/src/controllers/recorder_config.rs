//! `RecorderConfig` status: its storage is usable as configured (for
//! PostgreSQL, the connection Secret and key exist in the operator namespace).

use tollgate_crds::RecorderConfig;
use tollgate_crds::recorder_config::StorageType;

use super::conditions::{Desired, with_ready};
use super::world::World;

pub const STORAGE_CONFIGURED: &str = "StorageConfigured";
/// The condition types this controller writes.
pub const CONDITION_TYPES: &[&str] = &[tollgate_crds::conditions::READY, STORAGE_CONFIGURED];

/// The conditions a `RecorderConfig` should carry, `Ready` first.
pub fn conditions_for(config: &RecorderConfig, world: &World) -> Vec<Desired> {
    with_ready(vec![storage(config, world)], "storage is configured")
}

fn storage(config: &RecorderConfig, world: &World) -> Desired {
    let storage = &config.spec.storage;
    match (storage.type_, &storage.postgres) {
        (StorageType::Sqlite, _) => Desired::gate(
            STORAGE_CONFIGURED,
            true,
            "Sqlite",
            "SQLite storage on the recorder's volume",
        ),
        (StorageType::Postgres, None) => Desired::gate(
            STORAGE_CONFIGURED,
            false,
            "PostgresNotSet",
            "storage type postgres needs a postgres section",
        ),
        (StorageType::Postgres, Some(pg)) => {
            let ns = &world.operator_namespace;
            let secret = &pg.secret_ref;
            match world.secrets.get(&secret.name) {
                None => Desired::gate(
                    STORAGE_CONFIGURED,
                    false,
                    "SecretNotFound",
                    format!("Secret {ns}/{} does not exist", secret.name),
                ),
                Some(keys) if !keys.contains(&secret.key) => Desired::gate(
                    STORAGE_CONFIGURED,
                    false,
                    "SecretKeyMissing",
                    format!("Secret {ns}/{} has no key {}", secret.name, secret.key),
                ),
                Some(_) => Desired::gate(
                    STORAGE_CONFIGURED,
                    true,
                    "Postgres",
                    format!(
                        "PostgreSQL, connection URL in Secret {ns}/{} key {}",
                        secret.name, secret.key
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::conditions::Status;
    use std::collections::BTreeSet;

    fn config(yaml: &str) -> RecorderConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const POSTGRES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: RecorderConfig
metadata: {name: default}
spec:
  storage:
    type: postgres
    postgres: {secretRef: {name: recorder-db, key: url}}
"#;

    fn world() -> World {
        World {
            operator_namespace: "tollgate-system".into(),
            ..World::default()
        }
    }

    #[test]
    fn sqlite_needs_nothing() {
        let c = conditions_for(
            &config(
                "{apiVersion: tollgate.dev/v1alpha1, kind: RecorderConfig, metadata: {name: default}, spec: {}}",
            ),
            &world(),
        );
        assert_eq!(c[0].status, Status::True);
        assert_eq!(c[1].reason, "Sqlite");
    }

    #[test]
    fn postgres_needs_its_secret_and_key() {
        let mut w = world();
        let c = conditions_for(&config(POSTGRES), &w);
        assert_eq!(c[0].reason, "SecretNotFound");
        assert!(c[0].message.contains("tollgate-system/recorder-db"));

        w.secrets
            .insert("recorder-db".into(), BTreeSet::from(["other".to_string()]));
        assert_eq!(
            conditions_for(&config(POSTGRES), &w)[0].reason,
            "SecretKeyMissing"
        );

        w.secrets
            .insert("recorder-db".into(), BTreeSet::from(["url".to_string()]));
        let c = conditions_for(&config(POSTGRES), &w);
        assert_eq!(c[0].status, Status::True);
        assert_eq!(c[1].reason, "Postgres");
    }
}
