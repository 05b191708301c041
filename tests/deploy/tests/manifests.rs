//! The Kubernetes manifests under `deploy/k8s`, checked without a cluster:
//!
//! - every object (the base files, each overlay's own files, and each overlay rendered by
//!   kustomize, committed in `deploy/k8s/rendered/`) deserializes into its `k8s-openapi` type
//!   and serializes back with every key it had: a misspelled or misplaced field is lost on the
//!   way and reported with its path;
//! - in each rendered overlay, workload selectors match their pod labels, Services select some
//!   workload and target ports its containers have, probes use container ports, volume mounts
//!   name a volume or claim template, `envFrom` names a ConfigMap of the overlay;
//! - every `TIDELINE_*` variable a container gets (its `env` and its ConfigMaps) is one the
//!   binary it runs has a flag for, and the values given parse with that binary's command line.
//!
//! With `kubectl` on the PATH, the committed renders are also compared with a fresh
//! `kubectl kustomize` of each overlay (regenerate them with the command in
//! `deploy/k8s/README.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodTemplateSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const OVERLAYS: [&str; 2] = ["dev", "production"];

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s")
}

/// The YAML documents of `text`, as JSON values (empty documents skipped).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let yaml = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
            serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{origin}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The objects of every YAML file in `dir` but its kustomization.
fn files_in(dir: &Path) -> Vec<(String, Value)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .flat_map(|p| {
            let origin = p.display().to_string();
            documents(&read(p), &origin).into_iter().map(move |d| (origin.clone(), d))
        })
        .collect()
}

/// A scalar as a string, so that `cpu: 1` and the `"1"` it comes back as compare equal.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every key of `original` (nulls and empty maps aside) that `back` lacks or changed.
fn lost_keys(original: &Value, back: &Value, path: &str, lost: &mut Vec<String>) {
    match original {
        Value::Object(fields) => {
            for (key, value) in fields {
                if value.is_null() || value.as_object().is_some_and(|m| m.is_empty()) {
                    continue;
                }
                let here = format!("{path}.{key}");
                match back.get(key) {
                    Some(b) => lost_keys(value, b, &here, lost),
                    None => lost.push(format!("{here} is not a field there")),
                }
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                let here = format!("{path}[{i}]");
                match back.get(i) {
                    Some(b) => lost_keys(value, b, &here, lost),
                    None => lost.push(format!("{here} was dropped")),
                }
            }
        }
        _ if back.is_object() || back.is_array() || scalar(original) != scalar(back) => {
            lost.push(format!("{path}: {original} came back as {back}"));
        }
        _ => {}
    }
}

/// Deserializes `doc` as a `T` and checks nothing was lost on the way back.
fn strict<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    lost_keys(doc, &back, "", &mut lost);
    if lost.is_empty() { Ok(typed) } else { Err(lost.join("; ")) }
}

/// The objects of one overlay, typed.
#[derive(Default)]
struct Objects {
    config_maps: BTreeMap<String, ConfigMap>,
    services: Vec<Service>,
    /// Workload kind/name -> its pod template.
    workloads: BTreeMap<String, PodTemplateSpec>,
    stateful_sets: Vec<StatefulSet>,
    deployments: Vec<Deployment>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    namespaces: Vec<Namespace>,
}

fn name_of(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("?");
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    format!("{kind}/{name}")
}

/// Checks each object strictly; returns them typed, and every problem found.
fn typed(docs: &[(String, Value)], problems: &mut Vec<String>) -> Objects {
    let mut objects = Objects::default();
    for (origin, doc) in docs {
        let api = (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or(""));
        let result = match api {
            ("v1", "ConfigMap") => strict::<ConfigMap>(doc).map(|o| {
                objects.config_maps.insert(o.metadata.name.clone().unwrap_or_default(), o);
            }),
            ("v1", "Service") => strict::<Service>(doc).map(|o| objects.services.push(o)),
            ("v1", "Namespace") => strict::<Namespace>(doc).map(|o| objects.namespaces.push(o)),
            ("apps/v1", "StatefulSet") => strict::<StatefulSet>(doc).map(|o| {
                let template = o.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
                objects.workloads.insert(name_of(doc), template);
                objects.stateful_sets.push(o);
            }),
            ("apps/v1", "Deployment") => strict::<Deployment>(doc).map(|o| {
                let template = o.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
                objects.workloads.insert(name_of(doc), template);
                objects.deployments.push(o);
            }),
            ("policy/v1", "PodDisruptionBudget") => {
                strict::<PodDisruptionBudget>(doc).map(|o| objects.pdbs.push(o))
            }
            ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                strict::<HorizontalPodAutoscaler>(doc).map(|o| objects.hpas.push(o))
            }
            (version, kind) => Err(format!("no check for {version} {kind}")),
        };
        if let Err(e) = result {
            problems.push(format!("{origin}: {}: {e}", name_of(doc)));
        }
    }
    objects
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

fn containers(template: &PodTemplateSpec) -> &[Container] {
    template.spec.as_ref().map_or(&[], |s| &s.containers[..])
}

/// Whether `port` (a number or a name) is a port of one of `containers`.
fn has_port(containers: &[Container], port: &IntOrString) -> bool {
    containers.iter().flat_map(|c| c.ports.iter().flatten()).any(|p| match port {
        IntOrString::Int(n) => p.container_port == *n,
        IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
    })
}

/// The references between the objects of one rendered overlay.
fn check_references(overlay: &str, o: &Objects, problems: &mut Vec<String>) {
    let mut problem = |p: String| problems.push(format!("{overlay}: {p}"));
    let selectors = o
        .stateful_sets
        .iter()
        .map(|s| ("StatefulSet", &s.metadata, &s.spec.as_ref().expect("strict checked").selector))
        .chain(o.deployments.iter().map(|d| {
            ("Deployment", &d.metadata, &d.spec.as_ref().expect("strict checked").selector)
        }));
    for (kind, metadata, selector) in selectors {
        let name = metadata.name.clone().unwrap_or_default();
        let selector = selector.match_labels.clone().unwrap_or_default();
        let template = &o.workloads[&format!("{kind}/{name}")];
        if !labels_match(&selector, &pod_labels(template)) {
            problem(format!("{kind}/{name}: selector {selector:?} misses its pod labels"));
        }
    }
    for s in &o.stateful_sets {
        let name = s.metadata.name.clone().unwrap_or_default();
        let spec = s.spec.as_ref().expect("strict checked");
        if !o
            .services
            .iter()
            .any(|svc| svc.metadata.name.as_deref() == spec.service_name.as_deref())
        {
            problem(format!(
                "StatefulSet/{name}: serviceName {:?} is no Service",
                spec.service_name
            ));
        }
    }
    for svc in &o.services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let spec = svc.spec.as_ref().expect("strict checked");
        let selector = spec.selector.clone().unwrap_or_default();
        let selected: Vec<&PodTemplateSpec> =
            o.workloads.values().filter(|t| labels_match(&selector, &pod_labels(t))).collect();
        if selected.is_empty() {
            problem(format!("Service/{name}: selector {selector:?} selects no workload"));
        }
        for port in spec.ports.iter().flatten() {
            let target = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
            for t in &selected {
                if !has_port(containers(t), &target) {
                    problem(format!("Service/{name}: target port {target:?} is on no container"));
                }
            }
        }
    }
    for (workload, template) in &o.workloads {
        let spec = template.spec.as_ref().expect("a pod spec");
        let mut volumes: BTreeSet<String> =
            spec.volumes.iter().flatten().map(|v| v.name.clone()).collect();
        for s in &o.stateful_sets {
            if format!("StatefulSet/{}", s.metadata.name.clone().unwrap_or_default()) == *workload {
                let claims = s.spec.as_ref().and_then(|s| s.volume_claim_templates.clone());
                volumes.extend(claims.into_iter().flatten().filter_map(|c| c.metadata.name));
            }
        }
        for c in &spec.containers {
            for m in c.volume_mounts.iter().flatten() {
                if !volumes.contains(&m.name) {
                    problem(format!("{workload}: mount {} names no volume", m.name));
                }
            }
            for (kind, probe) in [
                ("liveness", &c.liveness_probe),
                ("readiness", &c.readiness_probe),
                ("startup", &c.startup_probe),
            ] {
                let Some(probe) = probe else { continue };
                let port = probe
                    .grpc
                    .as_ref()
                    .map(|g| IntOrString::Int(g.port))
                    .or_else(|| probe.http_get.as_ref().map(|h| h.port.clone()))
                    .or_else(|| probe.tcp_socket.as_ref().map(|t| t.port.clone()));
                match port {
                    Some(port) if has_port(std::slice::from_ref(c), &port) => {}
                    other => problem(format!(
                        "{workload}: {kind} probe port {other:?} is not a container port"
                    )),
                }
            }
            if c.liveness_probe.is_none() || c.readiness_probe.is_none() {
                problem(format!(
                    "{workload}: container {} lacks a liveness or readiness probe",
                    c.name
                ));
            }
            for source in c.env_from.iter().flatten() {
                let Some(cm) = &source.config_map_ref else { continue };
                if !o.config_maps.contains_key(&cm.name) {
                    problem(format!("{workload}: envFrom names ConfigMap {} it lacks", cm.name));
                }
            }
        }
    }
    for pdb in &o.pdbs {
        let name = pdb.metadata.name.clone().unwrap_or_default();
        let selector = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.clone());
        if !o
            .workloads
            .values()
            .any(|t| labels_match(&selector.clone().unwrap_or_default(), &pod_labels(t)))
        {
            problem(format!("PodDisruptionBudget/{name}: selects no workload"));
        }
    }
    for hpa in &o.hpas {
        let name = hpa.metadata.name.clone().unwrap_or_default();
        let target = &hpa.spec.as_ref().expect("strict checked").scale_target_ref;
        if !o.workloads.contains_key(&format!("{}/{}", target.kind, target.name)) {
            problem(format!(
                "HorizontalPodAutoscaler/{name}: targets {}/{}, not in the overlay",
                target.kind, target.name
            ));
        }
    }
}

/// The command line of the binary a container runs, by its command.
fn command_line(binary: &str) -> Option<clap::Command> {
    match binary {
        "tideline-controller" => Some(tideline_controller::options::Options::command()),
        "tideline-broker" => Some(tideline_broker::options::Options::command()),
        "tideline-coordinator" => Some(tideline_coordinator::options::Options::command()),
        _ => None,
    }
}

/// Every `TIDELINE_*` variable of each container: one its binary reads, with a value its
/// command line parses.
fn check_settings(overlay: &str, o: &Objects, problems: &mut Vec<String>) {
    for (workload, template) in &o.workloads {
        for c in containers(template) {
            let binary =
                c.command.as_ref().and_then(|cmd| cmd.first()).cloned().unwrap_or_default();
            let Some(cli) = command_line(&binary) else {
                problems.push(format!(
                    "{overlay}: {workload}: container {} runs {binary:?}, not a Tideline service",
                    c.name
                ));
                continue;
            };
            // Name -> value (None: from the downward API, known only in the pod).
            let mut vars: Vec<(String, Option<String>)> = Vec::new();
            for source in c.env_from.iter().flatten() {
                let data = source
                    .config_map_ref
                    .as_ref()
                    .and_then(|r| o.config_maps.get(&r.name))
                    .and_then(|cm| cm.data.clone())
                    .unwrap_or_default();
                vars.extend(data.into_iter().map(|(k, v)| (k, Some(v))));
            }
            for e in c.env.iter().flatten() {
                vars.push((
                    e.name.clone(),
                    if e.value_from.is_some() { None } else { e.value.clone() },
                ));
            }
            let mut args = vec![binary.clone()];
            for (name, value) in vars.iter().filter(|(n, _)| n.starts_with("TIDELINE_")) {
                let arg =
                    cli.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
                let Some(arg) = arg else {
                    problems
                        .push(format!("{overlay}: {workload}: {binary} has no flag for {name}"));
                    continue;
                };
                let long = arg.get_long().expect("every setting has a long flag");
                match (value, arg.get_action().takes_values()) {
                    (None, _) => {}
                    (Some(v), false) if v == "true" => args.push(format!("--{long}")),
                    (Some(v), false) => problems.push(format!(
                        "{overlay}: {workload}: {name}={v}: a switch is set with \"true\""
                    )),
                    (Some(v), true) => args.push(format!("--{long}={v}")),
                }
            }
            // Settings from the downward API are required ones the pod gives: let the parse
            // stand them in, so that only the values written in the manifests are judged.
            let given: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
            let cli = cli.mut_args(|a| {
                if a.get_env().is_some_and(|e| given.contains(e.to_str().unwrap_or(""))) {
                    a.required(false)
                } else {
                    a
                }
            });
            if let Err(e) = cli.try_get_matches_from(&args) {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                problems.push(format!("{overlay}: {workload}: {binary} refuses {args:?}: {first}"));
            }
        }
    }
}

fn kubectl_available() -> bool {
    Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success())
}

/// Base files, overlay files and the rendered overlays: strict types, references, settings.
#[test]
fn manifests_are_valid_kubernetes_objects_that_fit_together_and_the_binaries() {
    let k8s = k8s_dir();
    let mut problems = Vec::new();
    typed(&files_in(&k8s.join("base")), &mut problems);
    for overlay in OVERLAYS {
        typed(&files_in(&k8s.join("overlays").join(overlay)), &mut problems);
        let path = k8s.join("rendered").join(format!("{overlay}.yaml"));
        let origin = path.display().to_string();
        let docs: Vec<(String, Value)> =
            documents(&read(&path), &origin).into_iter().map(|d| (origin.clone(), d)).collect();
        let objects = typed(&docs, &mut problems);
        if objects.stateful_sets.len() != 2
            || objects.deployments.len() != 1
            || objects.namespaces.len() != 1
        {
            problems.push(format!(
                "{overlay}: wants 2 StatefulSets (controller, broker), 1 Deployment \
                 (coordinator) and its Namespace"
            ));
        }
        check_references(overlay, &objects, &mut problems);
        check_settings(overlay, &objects, &mut problems);
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

/// The production overlay has what an available cluster needs: 3 controllers and 3 brokers
/// spread over hosts and zones, disruption budgets for each role, autoscaled coordinators.
#[test]
fn production_is_highly_available() {
    let path = k8s_dir().join("rendered/production.yaml");
    let docs: Vec<(String, Value)> = documents(&read(&path), "production")
        .into_iter()
        .map(|d| ("production".into(), d))
        .collect();
    let mut problems = Vec::new();
    let o = typed(&docs, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    for s in &o.stateful_sets {
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3), "{:?}", s.metadata.name);
        let pod = spec.template.spec.as_ref().unwrap();
        let anti = pod.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref());
        assert!(
            anti.is_some_and(|a| a.required_during_scheduling_ignored_during_execution.is_some()),
            "{:?}: one per host",
            s.metadata.name
        );
        let zones = pod
            .topology_spread_constraints
            .iter()
            .flatten()
            .any(|t| t.topology_key == "topology.kubernetes.io/zone");
        assert!(zones, "{:?}: spread over zones", s.metadata.name);
    }
    assert_eq!(o.pdbs.len(), 3, "a disruption budget per role");
    let hpa = o.hpas.first().expect("coordinators autoscaled").spec.clone().unwrap();
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    assert!(hpa.min_replicas.unwrap_or(1) >= 2);
}

/// A misspelled field, a misplaced one and a wrong type are each caught by the strict check
/// (the check itself is what the other tests rely on).
#[test]
fn the_strict_check_catches_what_it_must() {
    let good = serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"selector": {"a": "b"}, "ports": [{"port": 9092, "targetPort": "grpc"}]}
    });
    assert!(strict::<Service>(&good).is_ok());
    let mut misspelled = good.clone();
    misspelled["spec"]["ports"][0]["targetport"] = serde_json::json!("grpc");
    let e = strict::<Service>(&misspelled).unwrap_err();
    assert!(e.contains(".spec.ports[0].targetport"), "{e}");
    let mut misplaced = good.clone();
    misplaced["spec"]["replicas"] = serde_json::json!(3);
    assert!(strict::<Service>(&misplaced).unwrap_err().contains(".spec.replicas"));
    let mut wrong_type = good;
    wrong_type["spec"]["ports"][0]["port"] = serde_json::json!("not a number");
    assert!(strict::<Service>(&wrong_type).is_err());
}

/// The committed renders are what kustomize makes of the overlays now (only where `kubectl`
/// is installed; the strict checks above run on the committed renders everywhere).
#[test]
fn committed_renders_are_current() {
    if !kubectl_available() {
        eprintln!("kubectl not found: the committed renders are checked, not re-rendered");
        return;
    }
    let k8s = k8s_dir();
    for overlay in OVERLAYS {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(k8s.join("overlays").join(overlay))
            .output()
            .expect("kubectl runs");
        assert!(out.status.success(), "{overlay}: {}", String::from_utf8_lossy(&out.stderr));
        let fresh = documents(&String::from_utf8(out.stdout).unwrap(), overlay);
        let path = k8s.join("rendered").join(format!("{overlay}.yaml"));
        let committed = documents(&read(&path), overlay);
        assert!(
            fresh == committed,
            "{} is stale: regenerate it with `kubectl kustomize deploy/k8s/overlays/{overlay} > deploy/k8s/rendered/{overlay}.yaml`",
            path.display()
        );
    }
}
