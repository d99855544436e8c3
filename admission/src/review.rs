//! AdmissionReview in, AdmissionReview out: one pure function per webhook
//! path, over what the shell's caches know ([`PolicyView`]).
//!
//! On UPDATE, a violation the old object already had (same rule, same
//! detail) is tolerated: the object was admitted before, the audit sweep
//! reports it, and refusing unrelated updates (labels, finalizers) would only
//! wedge it. Anything an update introduces is refused.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::InjectionSettings;
use crate::inject::inject;
use crate::rules::{
    ConnectInput, NamespaceChange, Subject, Violation, check_connect, check_namespace_change,
    check_pod,
};
use crate::view::{NamespaceView, PolicyView};
use crate::workload::pod_template;

/// The webhook paths the operator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Webhook {
    MutatePods,
    ValidatePods,
    ValidatePodsEphemeral,
    ValidatePodsConnect,
    ValidateNamespaces,
    ValidateWorkloads,
}

impl Webhook {
    pub const ALL: [Webhook; 6] = [
        Webhook::MutatePods,
        Webhook::ValidatePods,
        Webhook::ValidatePodsEphemeral,
        Webhook::ValidatePodsConnect,
        Webhook::ValidateNamespaces,
        Webhook::ValidateWorkloads,
    ];

    /// The URL path, appended to the webhook base URL.
    pub fn path(self) -> &'static str {
        match self {
            Webhook::MutatePods => "/mutate/pods",
            Webhook::ValidatePods => "/validate/pods",
            Webhook::ValidatePodsEphemeral => "/validate/pods-ephemeral",
            Webhook::ValidatePodsConnect => "/validate/pods-connect",
            Webhook::ValidateNamespaces => "/validate/namespaces",
            Webhook::ValidateWorkloads => "/validate/workloads",
        }
    }
}

/// Answers one AdmissionReview. Never fails: a malformed review is answered
/// with a denial saying what was wrong (fail closed).
pub fn review(
    webhook: Webhook,
    review: AdmissionReview<DynamicObject>,
    view: &dyn PolicyView,
    settings: &InjectionSettings,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(_) => {
            return AdmissionResponse::invalid("the AdmissionReview carries no request")
                .into_review();
        }
    };
    let response = AdmissionResponse::from(&request);
    let outcome = match webhook {
        Webhook::MutatePods => return mutate_pod(&request, response, view, settings),
        Webhook::ValidatePods | Webhook::ValidatePodsEphemeral => {
            validate_pod(&request, view, settings)
        }
        Webhook::ValidatePodsConnect => validate_connect(&request),
        Webhook::ValidateNamespaces => validate_namespace(&request, view),
        Webhook::ValidateWorkloads => validate_workload(&request, view, settings),
    };
    match outcome {
        Ok(violations) if violations.is_empty() => response.into_review(),
        Ok(violations) => deny(response, &denial_message(&violations)),
        Err(problem) => deny(
            response,
            &format!("tollgate: cannot review this request: {problem}"),
        ),
    }
}

/// The message of a denial: every violation, in rule-table order.
/// Findings of one rule are grouped: `[id] message: detail; detail`.
pub fn denial_message(violations: &[Violation]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut index = 0;
    while index < violations.len() {
        let rule = violations[index].rule;
        let details: Vec<&str> = violations[index..]
            .iter()
            .take_while(|v| v.rule == rule)
            .map(|v| v.detail.as_str())
            .collect();
        index += details.len();
        parts.push(format!(
            "[{rule}] {}: {}",
            violations[index - 1].message,
            details.join("; ")
        ));
    }
    format!("tollgate denied the request: {}", parts.join(" | "))
}

fn deny(response: AdmissionResponse, message: &str) -> AdmissionReview<DynamicObject> {
    let mut response = response.deny(message);
    response.result.code = 403;
    response.result.reason = "Forbidden".into();
    response.into_review()
}

fn namespace_of(request: &AdmissionRequest<DynamicObject>) -> String {
    request.namespace.clone().unwrap_or_default()
}

fn typed<T: serde::de::DeserializeOwned>(
    object: Option<&DynamicObject>,
    what: &str,
) -> Result<Option<T>, String> {
    let Some(object) = object else {
        return Ok(None);
    };
    let value = serde_json::to_value(object).map_err(|e| format!("{what}: {e}"))?;
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| format!("{what} is malformed: {e}"))
}

fn mutate_pod(
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
    view: &dyn PolicyView,
    settings: &InjectionSettings,
) -> AdmissionReview<DynamicObject> {
    if request.operation != Operation::Create {
        return response.into_review();
    }
    let pod: Pod = match typed(request.object.as_ref(), "the pod") {
        Ok(Some(pod)) => pod,
        Ok(None) => return deny(response, "tollgate: the CREATE review carries no pod"),
        Err(problem) => return deny(response, &format!("tollgate: {problem}")),
    };
    let ns = NamespaceView::from_view(view, &namespace_of(request));
    match inject(&pod, &ns, settings) {
        Ok(injection) if injection.patch.0.is_empty() => response.into_review(),
        Ok(injection) => match response.clone().with_patch(injection.patch) {
            Ok(patched) => patched.into_review(),
            Err(e) => deny(
                response,
                &format!("tollgate: the patch could not be encoded: {e}"),
            ),
        },
        Err(e) => deny(response, &format!("tollgate: injection failed: {e}")),
    }
}

fn pod_violations(
    pod: &Pod,
    ns: &NamespaceView,
    settings: &InjectionSettings,
) -> Result<Vec<Violation>, String> {
    let empty = PodSpec::default();
    check_pod(
        Subject::Pod,
        &pod.metadata,
        pod.spec.as_ref().unwrap_or(&empty),
        ns,
        settings,
    )
    .map_err(|e| e.to_string())
}

/// Drops the violations `old` already had.
fn introduced(new: Vec<Violation>, old: &[Violation]) -> Vec<Violation> {
    new.into_iter().filter(|v| !old.contains(v)).collect()
}

fn validate_pod(
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn PolicyView,
    settings: &InjectionSettings,
) -> Result<Vec<Violation>, String> {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Ok(Vec::new());
    }
    let pod: Pod = typed(request.object.as_ref(), "the pod")?.ok_or("the review carries no pod")?;
    let ns = NamespaceView::from_view(view, &namespace_of(request));
    let violations = pod_violations(&pod, &ns, settings)?;
    let old: Option<Pod> = typed(request.old_object.as_ref(), "the old pod")?;
    match (request.operation.clone(), old) {
        (Operation::Update, Some(old)) => Ok(introduced(
            violations,
            &pod_violations(&old, &ns, settings)?,
        )),
        _ => Ok(violations),
    }
}

fn validate_connect(request: &AdmissionRequest<DynamicObject>) -> Result<Vec<Violation>, String> {
    if request.operation != Operation::Connect {
        return Ok(Vec::new());
    }
    let options: Value = typed(request.object.as_ref(), "the connect options")?
        .ok_or("the CONNECT review carries no options")?;
    let container = options
        .get("container")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(check_connect(&ConnectInput { container }))
}

fn validate_namespace(
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn PolicyView,
) -> Result<Vec<Violation>, String> {
    if request.operation != Operation::Update {
        return Ok(Vec::new());
    }
    let labels = |o: Option<&DynamicObject>| -> BTreeMap<String, String> {
        o.and_then(|o| o.metadata.labels.clone())
            .unwrap_or_default()
    };
    let old_labels = labels(request.old_object.as_ref());
    let new_labels = labels(request.object.as_ref());
    let ns = NamespaceView::from_view(view, &request.name);
    Ok(check_namespace_change(&NamespaceChange {
        old_labels: &old_labels,
        new_labels: &new_labels,
        ns: &ns,
    }))
}

fn template_violations(
    object: &Value,
    ns: &NamespaceView,
    settings: &InjectionSettings,
) -> Result<Vec<Violation>, String> {
    let Some(template) = pod_template(object) else {
        return Ok(Vec::new()); // not a workload kind: nothing to check
    };
    let template = template?;
    let empty = PodSpec::default();
    check_pod(
        Subject::Template,
        &template.metadata.unwrap_or_default(),
        template.spec.as_ref().unwrap_or(&empty),
        ns,
        settings,
    )
    .map_err(|e| e.to_string())
}

fn validate_workload(
    request: &AdmissionRequest<DynamicObject>,
    view: &dyn PolicyView,
    settings: &InjectionSettings,
) -> Result<Vec<Violation>, String> {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Ok(Vec::new());
    }
    let object: Value =
        typed(request.object.as_ref(), "the workload")?.ok_or("the review carries no object")?;
    let ns = NamespaceView::from_view(view, &namespace_of(request));
    let violations = template_violations(&object, &ns, settings)?;
    let old: Option<Value> = typed(request.old_object.as_ref(), "the old workload")?;
    match (request.operation.clone(), old) {
        (Operation::Update, Some(old)) => Ok(introduced(
            violations,
            &template_violations(&old, &ns, settings)?,
        )),
        _ => Ok(violations),
    }
}
