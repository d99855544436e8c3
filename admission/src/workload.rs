//! Where the pod template sits inside a workload, so that workload templates
//! go through the same rules (and, in `kubectl tollgate inject`, the same
//! injection) as pods.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The kinds whose pod templates are checked: `(apiVersion, kind, pointer)`.
pub const WORKLOADS: [(&str, &str, &str); 6] = [
    ("apps/v1", "Deployment", "/spec/template"),
    ("apps/v1", "StatefulSet", "/spec/template"),
    ("apps/v1", "DaemonSet", "/spec/template"),
    ("apps/v1", "ReplicaSet", "/spec/template"),
    ("batch/v1", "Job", "/spec/template"),
    ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template"),
];

/// The JSON pointer of the pod template for a workload kind (matched by
/// kind only: `matchPolicy: Equivalent` may send other versions).
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    WORKLOADS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map(|(_, _, pointer)| *pointer)
}

/// The pod template of a workload object, if `obj` is one.
pub fn pod_template(obj: &Value) -> Option<Result<PodTemplateSpec, String>> {
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let pointer = template_pointer(kind)?;
    Some(match obj.pointer(pointer) {
        None => Err(format!("{kind} has no pod template at {pointer}")),
        Some(t) => serde_json::from_value(t.clone())
            .map_err(|e| format!("{kind} pod template is malformed: {e}")),
    })
}

/// Replaces the pod template of a workload object.
pub fn set_pod_template(obj: &mut Value, template: &PodTemplateSpec) -> Result<(), String> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let pointer = template_pointer(&kind).ok_or_else(|| format!("{kind} is not a workload"))?;
    let value = serde_json::to_value(template).map_err(|e| e.to_string())?;
    let slot = obj
        .pointer_mut(pointer)
        .ok_or_else(|| format!("{kind} has no pod template at {pointer}"))?;
    *slot = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_templates_of_deployments_and_cronjobs() {
        let deployment = json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
        let t = pod_template(&deployment).unwrap().unwrap();
        assert_eq!(t.spec.unwrap().containers[0].name, "a");
        let cron = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "b"}]}}}}}});
        let mut cron2 = cron.clone();
        let mut t = pod_template(&cron).unwrap().unwrap();
        t.spec.as_mut().unwrap().containers[0].name = "c".into();
        set_pod_template(&mut cron2, &t).unwrap();
        assert_eq!(
            cron2.pointer("/spec/jobTemplate/spec/template/spec/containers/0/name"),
            Some(&json!("c"))
        );
        assert!(pod_template(&json!({"kind": "Pod"})).is_none());
        assert!(
            pod_template(&json!({"kind": "Job", "spec": {}}))
                .unwrap()
                .is_err()
        );
    }
}
