//! Pruning the operator's owned objects by label: the per-namespace
//! ConfigMaps (`tollgate-control-ca`, labelled
//! `app.kubernetes.io/managed-by=tollgate-operator`) left in namespaces that
//! are no longer governed. The operator namespace is never pruned.

use super::world::World;

/// The label on every object the operator owns.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=tollgate-operator";
/// Names of the per-namespace ConfigMaps the operator owns.
pub const OWNED_CONFIGMAPS: &[&str] = &["tollgate-control-ca"];

/// The `(namespace, name)` of the labelled ConfigMaps to delete: owned names
/// in namespaces that exist and are not governed.
pub fn configmaps_to_prune(labelled: &[(String, String)], world: &World) -> Vec<(String, String)> {
    labelled
        .iter()
        .filter(|(ns, name)| {
            OWNED_CONFIGMAPS.contains(&name.as_str())
                && *ns != world.operator_namespace
                && world.namespaces.contains_key(ns)
                && !world.is_governed(ns)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::world::INJECT_LABEL;
    use std::collections::BTreeMap;

    #[test]
    fn only_owned_names_in_ungoverned_namespaces_are_pruned() {
        let mut world = World {
            operator_namespace: "tollgate-system".into(),
            ..World::default()
        };
        let label = |v: &str| BTreeMap::from([(INJECT_LABEL.to_string(), v.to_string())]);
        world.namespaces.insert("governed".into(), label("enabled"));
        world
            .namespaces
            .insert("opted-out".into(), label("disabled"));
        world.namespaces.insert("plain".into(), BTreeMap::new());
        world
            .namespaces
            .insert("tollgate-system".into(), BTreeMap::new());
        let pair = |ns: &str, name: &str| (ns.to_string(), name.to_string());
        let labelled = vec![
            pair("governed", "tollgate-control-ca"),
            pair("opted-out", "tollgate-control-ca"),
            pair("plain", "tollgate-control-ca"),
            pair("plain", "something-else"),
            pair("tollgate-system", "tollgate-control-ca"),
            pair("being-deleted", "tollgate-control-ca"),
        ];
        assert_eq!(
            configmaps_to_prune(&labelled, &world),
            vec![
                pair("opted-out", "tollgate-control-ca"),
                pair("plain", "tollgate-control-ca")
            ]
        );
    }
}
