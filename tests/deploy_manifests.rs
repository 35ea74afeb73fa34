//! Static checks of the deployment kit in `deploy/` (SPEC §10): every Kubernetes
//! manifest parses, the Deployment is hardened, the NetworkPolicies keep sandboxes
//! on keyward and keyward on public HTTPS, the ConfigMap's `keyward.toml` is
//! accepted by the real config parser, and no key material is committed.
//!
//! There is no cluster here; this is what CI runs instead of `kubectl apply`.

use base64::Engine as _;
use keyward::config::Config;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PROXY_PORT: i64 = 3128;
const ADMIN_PORT: i64 = 3129;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn k8s_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One parsed YAML document and the file it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"].as_str().unwrap_or("")
    }
}

/// Every non-empty YAML document in every `.yaml`/`.yml` under deploy/kubernetes.
fn docs() -> Vec<Doc> {
    let mut out = Vec::new();
    for path in files_under(&k8s_dir()) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "yaml" && ext != "yml" {
            continue;
        }
        let file = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value =
                Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: document {i}: {e}"));
            if value.is_null() {
                continue; // an empty document (e.g. a trailing `---`)
            }
            out.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    assert!(
        !out.is_empty(),
        "no manifests found under {}",
        k8s_dir().display()
    );
    out
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} named {name:?} under deploy/kubernetes"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(|s| s.as_slice()).unwrap_or(&[])
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(m) = v.as_mapping() {
        for (k, v) in m {
            let k = k.as_str().expect("label keys are strings").to_string();
            let v = match v {
                Value::String(s) => s.clone(),
                other => panic!("label {k}: value must be a string, got {other:?}"),
            };
            out.insert(k, v);
        }
    }
    out
}

/// A Kubernetes label selector (matchLabels only; matchExpressions are not used
/// in the kit and would need real evaluation here).
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector["matchExpressions"].is_null(),
        "matchExpressions not supported by this test"
    );
    str_map(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn deployment(docs: &[Doc]) -> &Doc {
    find(docs, "Deployment", "keyward")
}

fn keyward_pod_labels(docs: &[Doc]) -> BTreeMap<String, String> {
    str_map(&deployment(docs).value["spec"]["template"]["metadata"]["labels"])
}

fn keyward_container(docs: &[Doc]) -> &Value {
    let containers = seq(&deployment(docs).value["spec"]["template"]["spec"]["containers"]);
    containers
        .iter()
        .find(|c| c["name"].as_str() == Some("keyward"))
        .expect("a container named keyward")
}

/// A probe/Service port: a number, or the name of one of the container's ports.
fn resolve_port(port: &Value, container: &Value) -> i64 {
    match port {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(name) => seq(&container["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("named port {name:?} is not a container port")),
        other => panic!("bad port {other:?}"),
    }
}

fn configmap_toml(docs: &[Doc]) -> String {
    find(docs, "ConfigMap", "keyward-config").value["data"]["keyward.toml"]
        .as_str()
        .expect("ConfigMap keyward-config has data.keyward.toml")
        .to_string()
}

fn parsed_config(docs: &[Doc]) -> Config {
    let text = configmap_toml(docs);
    Config::parse(&text, "configmap.yaml").unwrap_or_else(|e| panic!("embedded keyward.toml: {e}"))
}

#[test]
fn every_document_has_api_version_kind_and_name() {
    for d in docs() {
        for key in ["apiVersion", "kind"] {
            let v = d.value[key].as_str().unwrap_or("");
            assert!(!v.is_empty(), "{}: a document without {key}", d.file);
        }
        assert!(
            !d.name().is_empty(),
            "{}: {} without metadata.name",
            d.file,
            d.kind()
        );
    }
}

#[test]
fn the_kit_has_every_piece() {
    let docs = docs();
    find(&docs, "Namespace", "keyward");
    find(&docs, "ConfigMap", "keyward-config");
    find(&docs, "Deployment", "keyward");
    find(&docs, "Service", "keyward");
    find(&docs, "Secret", "keyward-ca");
    find(&docs, "Secret", "keyward-vault");
    find(&docs, "Secret", "keyward-master-key");
    find(&docs, "Kustomization", "keyward");
    find(&docs, "Pod", "agent-triage-1");
    let policies = docs.iter().filter(|d| d.kind() == "NetworkPolicy").count();
    assert!(
        policies >= 3,
        "expected the sandbox-egress, keyward-ingress and keyward-egress policies"
    );
    // Everything namespaced says where it goes (the kustomization sets no namespace).
    for d in &docs {
        if !matches!(d.kind(), "Namespace" | "Kustomization") {
            assert!(
                !d.namespace().is_empty(),
                "{}: {} {} has no namespace",
                d.file,
                d.kind(),
                d.name()
            );
        }
    }
}

#[test]
fn deployment_is_replicated_and_hardened() {
    let docs = docs();
    let dep = &deployment(&docs).value;
    let replicas = dep["spec"]["replicas"].as_i64().expect("spec.replicas");
    assert!(replicas >= 2, "replicas = {replicas}, want >= 2");

    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "pod runAsNonRoot"
    );
    let uid = pod["securityContext"]["runAsUser"].as_i64();
    assert!(uid.is_none_or(|u| u != 0), "pod runs as uid 0");
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[key].as_bool(), Some(true), "pod sets {key}");
    }
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "keyward needs no API token"
    );
    assert!(
        selector_matches(&dep["spec"]["selector"], &keyward_pod_labels(&docs)),
        "the Deployment's selector does not match its pod template"
    );

    let containers: Vec<&Value> = seq(&pod["containers"])
        .iter()
        .chain(seq(&pod["initContainers"]).iter())
        .collect();
    assert!(!containers.is_empty());
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}: allowPrivilegeEscalation"
        );
        assert_ne!(sc["privileged"].as_bool(), Some(true), "{name}: privileged");
        assert_ne!(
            sc["runAsNonRoot"].as_bool(),
            Some(false),
            "{name}: runAsNonRoot overridden"
        );
        let drop: Vec<&str> = seq(&sc["capabilities"]["drop"])
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            drop.contains(&"ALL"),
            "{name}: capabilities.drop must contain ALL"
        );
        assert!(
            seq(&sc["capabilities"]["add"]).is_empty(),
            "{name}: adds capabilities"
        );
        let seccomp = sc["seccompProfile"]["type"]
            .as_str()
            .or(pod["securityContext"]["seccompProfile"]["type"].as_str());
        assert_eq!(seccomp, Some("RuntimeDefault"), "{name}: seccompProfile");
        for r in ["requests", "limits"] {
            assert!(
                c["resources"][r]["memory"].is_string(),
                "{name}: resources.{r}.memory"
            );
        }
        assert!(
            c["resources"]["requests"]["cpu"].is_string(),
            "{name}: resources.requests.cpu"
        );
    }
}

#[test]
fn deployment_runs_keyward_with_probes_on_the_admin_port() {
    let docs = docs();
    let c = keyward_container(&docs);
    let args: Vec<&str> = seq(&c["args"]).iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(args, ["serve", "--config", "/etc/keyward/keyward.toml"]);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(resolve_port(&get["port"], c), ADMIN_PORT, "{probe} port");
    }
    let env: BTreeMap<&str, &str> = seq(&c["env"])
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env.get("KEYWARD_LOG"), Some(&"info"));
    for var in ["KEYWARD_MASTER_KEY", "KEYWARD_MASTER_PASSPHRASE"] {
        assert!(
            !env.contains_key(var),
            "{var} must come from a Secret, not a literal"
        );
    }

    let ports: Vec<i64> = seq(&c["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert!(
        ports.contains(&PROXY_PORT) && ports.contains(&ADMIN_PORT),
        "container ports {ports:?}"
    );
    let cfg = parsed_config(&docs);
    assert_eq!(
        i64::from(cfg.proxy.listen.port()),
        PROXY_PORT,
        "config proxy.listen port"
    );
    assert!(
        cfg.proxy.listen.ip().is_unspecified(),
        "proxy must listen on all pod addresses"
    );
    let admin = cfg
        .admin
        .listen
        .expect("config enables the admin API (probes need it)");
    assert_eq!(
        i64::from(admin.port()),
        ADMIN_PORT,
        "config admin.listen port"
    );
}

#[test]
fn deployment_mounts_config_and_secrets_read_only() {
    let docs = docs();
    let pod = &deployment(&docs).value["spec"]["template"]["spec"];
    let c = keyward_container(&docs);
    let volumes: BTreeMap<&str, &Value> = seq(&pod["volumes"])
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mounts = seq(&c["volumeMounts"]);

    let mut tmp_ok = false;
    for m in mounts {
        let name = m["name"].as_str().unwrap();
        let vol = volumes
            .get(name)
            .unwrap_or_else(|| panic!("mount of undeclared volume {name}"));
        let path = m["mountPath"].as_str().unwrap();
        if vol["secret"].is_mapping() || vol["configMap"].is_mapping() {
            assert_eq!(
                m["readOnly"].as_bool(),
                Some(true),
                "{path}: Secret/ConfigMap mounts are read-only"
            );
        }
        if vol["emptyDir"].is_mapping() && path == "/tmp" {
            assert_ne!(m["readOnly"].as_bool(), Some(true));
            tmp_ok = true;
        }
        assert!(vol["hostPath"].is_null(), "{name}: hostPath volume");
    }
    assert!(
        tmp_ok,
        "a writable emptyDir at /tmp (the root filesystem is read-only)"
    );

    // The config's file paths land in the right read-only Secret mounts, under
    // keys the Secret templates define.
    let cfg = parsed_config(&docs);
    let expect = [
        (cfg.tls.ca_cert.clone(), "keyward-ca"),
        (cfg.tls.ca_key.clone(), "keyward-ca"),
        (cfg.vault.path.clone(), "keyward-vault"),
        (cfg.vault.master_key_file.clone(), "keyward-master-key"),
    ];
    for (file, secret) in expect {
        let dir = file.parent().unwrap().to_str().unwrap();
        let key = file.file_name().unwrap().to_str().unwrap();
        let m = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .unwrap_or_else(|| panic!("{}: no volume mounted at {dir}", file.display()));
        // A subPath mount never sees Secret updates, which would break hot reload.
        assert!(
            m["subPath"].is_null(),
            "{dir}: mount the Secret directory, not a subPath"
        );
        let vol = volumes[m["name"].as_str().unwrap()];
        assert_eq!(
            vol["secret"]["secretName"].as_str(),
            Some(secret),
            "{dir} should be Secret {secret}"
        );
        let template = find(&docs, "Secret", secret);
        assert!(
            !template.value["data"][key].is_null(),
            "Secret {secret} template has no key {key}"
        );
    }

    // The config file itself comes from the ConfigMap.
    let cm = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/etc/keyward/keyward.toml"))
        .expect("keyward.toml mounted at /etc/keyward/keyward.toml");
    let vol = volumes[cm["name"].as_str().unwrap()];
    assert_eq!(vol["configMap"]["name"].as_str(), Some("keyward-config"));
}

#[test]
fn configmap_keyward_toml_is_accepted_by_the_config_parser() {
    let docs = docs();
    let cfg = parsed_config(&docs);
    assert_eq!(
        cfg.audit.path,
        Path::new("-"),
        "audit to stdout for the log collector"
    );
    assert!(!cfg.egress.allow.is_empty(), "egress.allow examples");
    assert_eq!(
        cfg.egress.ports,
        vec![443],
        "egress.ports must match keyward-egress (TCP 443)"
    );
    assert!(
        cfg.egress.resolve.is_empty(),
        "no test host overrides in a deployment config"
    );
    assert!(!cfg.chains.is_empty(), "a chain example");
    assert!(!cfg.agents.is_empty(), "an agent example");
    assert!(cfg.tls.ca_cert.starts_with("/etc/keyward/ca"));
    assert!(cfg.vault.path.starts_with("/etc/keyward/vault"));
    assert!(cfg.vault.master_key_file.starts_with("/etc/keyward/master"));
}

#[test]
fn proxy_service_exposes_only_3128() {
    let docs = docs();
    let svc = &find(&docs, "Service", "keyward").value["spec"];
    let ty = svc["type"].as_str().unwrap_or("ClusterIP");
    assert_eq!(ty, "ClusterIP");
    let ports: Vec<i64> = seq(&svc["ports"])
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ports,
        vec![PROXY_PORT],
        "the sandbox-facing Service exposes the proxy port only"
    );
    let c = keyward_container(&docs);
    for p in seq(&svc["ports"]) {
        let target = if p["targetPort"].is_null() {
            &p["port"]
        } else {
            &p["targetPort"]
        };
        assert_eq!(resolve_port(target, c), PROXY_PORT);
    }
    assert!(selector_matches(
        &Value::Mapping(
            [(Value::from("matchLabels"), svc["selector"].clone())]
                .into_iter()
                .collect()
        ),
        &keyward_pod_labels(&docs)
    ));
    // No Service anywhere is of a type reachable from outside the cluster.
    for d in docs.iter().filter(|d| d.kind() == "Service") {
        let ty = d.value["spec"]["type"].as_str().unwrap_or("ClusterIP");
        assert_eq!(ty, "ClusterIP", "{}: Service {} is {ty}", d.file, d.name());
    }
}

// ---- NetworkPolicy -------------------------------------------------------------

/// Every policy that selects pods with these labels in this namespace (policies
/// are additive: all of them together are what the pod may do).
fn policies_for<'a>(
    docs: &'a [Doc],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Doc> {
    docs.iter()
        .filter(|d| d.kind() == "NetworkPolicy" && d.namespace() == namespace)
        .filter(|d| selector_matches(&d.value["spec"]["podSelector"], labels))
        .collect()
}

fn policy_types(d: &Doc) -> Vec<&str> {
    seq(&d.value["spec"]["policyTypes"])
        .iter()
        .filter_map(|v| v.as_str())
        .collect()
}

/// (protocol, port) pairs of a rule; an absent or empty list means "all ports",
/// which no rule in the kit may use.
fn rule_ports(rule: &Value, what: &str) -> Vec<(String, i64)> {
    let ports = seq(&rule["ports"]);
    assert!(
        !ports.is_empty(),
        "{what}: a rule without ports allows every port"
    );
    ports
        .iter()
        .map(|p| {
            assert!(p["endPort"].is_null(), "{what}: port ranges are not used");
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
            (
                proto,
                p["port"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{what}: numeric ports only")),
            )
        })
        .collect()
}

fn peers<'a>(rule: &'a Value, key: &str, what: &str) -> &'a [Value] {
    let p = seq(&rule[key]);
    assert!(
        !p.is_empty(),
        "{what}: a rule without `{key}` matches every peer"
    );
    p
}

fn is_kube_dns(peer: &Value) -> bool {
    peer["ipBlock"].is_null()
        && str_map(&peer["namespaceSelector"]["matchLabels"])
            .get("kubernetes.io/metadata.name")
            .map(String::as_str)
            == Some("kube-system")
        && str_map(&peer["podSelector"]["matchLabels"])
            .get("k8s-app")
            .map(String::as_str)
            == Some("kube-dns")
}

fn is_dns_ports(ports: &[(String, i64)]) -> bool {
    ports
        .iter()
        .all(|(proto, port)| *port == 53 && (proto == "UDP" || proto == "TCP"))
}

fn sandbox_labels() -> BTreeMap<String, String> {
    [("keyward.dev/role".to_string(), "sandbox".to_string())]
        .into_iter()
        .collect()
}

#[test]
fn sandboxes_may_reach_only_keyward_3128_and_dns() {
    let docs = docs();
    let keyward_labels = keyward_pod_labels(&docs);
    let keyward_ns = deployment(&docs).namespace().to_string();
    let pod = find(&docs, "Pod", "agent-triage-1");
    let sandbox_ns = pod.namespace();
    let pod_labels = str_map(&pod.value["metadata"]["labels"]);
    assert!(selector_matches(
        &Value::Mapping(
            [(
                Value::from("matchLabels"),
                serde_yaml_ng::to_value(sandbox_labels()).unwrap()
            )]
            .into_iter()
            .collect()
        ),
        &pod_labels
    ));

    let policies = policies_for(&docs, sandbox_ns, &sandbox_labels());
    assert!(
        !policies.is_empty(),
        "no NetworkPolicy selects sandbox pods in {sandbox_ns}"
    );
    assert!(
        policies.iter().any(|d| policy_types(d).contains(&"Egress")),
        "sandbox egress is not restricted"
    );
    let (mut to_keyward, mut to_dns) = (false, false);
    for d in policies {
        for (i, rule) in seq(&d.value["spec"]["egress"]).iter().enumerate() {
            let what = format!("{} egress[{i}]", d.name());
            let ports = rule_ports(rule, &what);
            for peer in peers(rule, "to", &what) {
                assert!(
                    peer["ipBlock"].is_null(),
                    "{what}: sandboxes get no ipBlock egress"
                );
                if is_kube_dns(peer) {
                    assert!(is_dns_ports(&ports), "{what}: kube-dns only on 53");
                    to_dns = true;
                    continue;
                }
                let ns = str_map(&peer["namespaceSelector"]["matchLabels"]);
                assert_eq!(
                    ns.get("kubernetes.io/metadata.name"),
                    Some(&keyward_ns),
                    "{what}: sandbox egress outside the keyward namespace"
                );
                let sel = &peer["podSelector"];
                assert!(
                    sel.is_mapping(),
                    "{what}: must select the keyward pods, not the whole namespace"
                );
                assert!(
                    selector_matches(sel, &keyward_labels),
                    "{what}: selector misses keyward pods"
                );
                assert!(
                    !str_map(&sel["matchLabels"]).is_empty(),
                    "{what}: empty podSelector"
                );
                assert_eq!(
                    ports,
                    vec![("TCP".to_string(), PROXY_PORT)],
                    "{what}: keyward on 3128 only"
                );
                to_keyward = true;
            }
        }
    }
    assert!(to_keyward, "sandboxes cannot reach keyward:3128");
    assert!(to_dns, "sandboxes cannot resolve names (kube-dns:53)");
}

#[test]
fn keyward_accepts_3128_from_sandboxes_and_3129_from_operators_only() {
    let docs = docs();
    let ns = deployment(&docs).namespace().to_string();
    let policies = policies_for(&docs, &ns, &keyward_pod_labels(&docs));
    assert!(
        policies
            .iter()
            .any(|d| policy_types(d).contains(&"Ingress")),
        "keyward ingress is not restricted"
    );
    let (mut proxy, mut admin) = (false, false);
    for d in policies {
        for (i, rule) in seq(&d.value["spec"]["ingress"]).iter().enumerate() {
            let what = format!("{} ingress[{i}]", d.name());
            let ports = rule_ports(rule, &what);
            for peer in peers(rule, "from", &what) {
                assert!(peer["ipBlock"].is_null(), "{what}: no ipBlock ingress");
                let from_sandbox = selector_matches(&peer["podSelector"], &sandbox_labels())
                    && !peer["podSelector"].is_null();
                for (proto, port) in &ports {
                    assert_eq!(proto, "TCP", "{what}");
                    match *port {
                        PROXY_PORT => {
                            assert!(
                                from_sandbox,
                                "{what}: 3128 only from keyward.dev/role=sandbox pods"
                            );
                            proxy = true;
                        }
                        ADMIN_PORT => {
                            assert!(
                                !from_sandbox,
                                "{what}: sandboxes must not reach the admin port"
                            );
                            let labels = str_map(&peer["namespaceSelector"]["matchLabels"])
                                .into_iter()
                                .chain(str_map(&peer["podSelector"]["matchLabels"]))
                                .count();
                            assert!(labels > 0, "{what}: admin port open to unlabelled peers");
                            admin = true;
                        }
                        other => panic!("{what}: unexpected ingress port {other}"),
                    }
                }
            }
        }
    }
    assert!(
        proxy && admin,
        "keyward ingress must admit 3128 (sandboxes) and 3129 (operators)"
    );
}

#[test]
fn keyward_egress_is_public_https_and_dns_only() {
    let docs = docs();
    let ns = deployment(&docs).namespace().to_string();
    let policies = policies_for(&docs, &ns, &keyward_pod_labels(&docs));
    assert!(
        policies.iter().any(|d| policy_types(d).contains(&"Egress")),
        "keyward egress is not restricted"
    );
    const MUST_EXCEPT: &[&str] = &[
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
    ];
    let (mut https, mut dns) = (false, false);
    for d in policies {
        for (i, rule) in seq(&d.value["spec"]["egress"]).iter().enumerate() {
            let what = format!("{} egress[{i}]", d.name());
            let ports = rule_ports(rule, &what);
            for peer in peers(rule, "to", &what) {
                if is_kube_dns(peer) {
                    assert!(is_dns_ports(&ports), "{what}: kube-dns only on 53");
                    dns = true;
                    continue;
                }
                let block = &peer["ipBlock"];
                assert!(
                    block.is_mapping(),
                    "{what}: keyward egress goes to ipBlocks or kube-dns only"
                );
                assert_eq!(
                    ports,
                    vec![("TCP".to_string(), 443)],
                    "{what}: upstream egress is TCP 443 only"
                );
                let cidr = block["cidr"].as_str().unwrap();
                let except: Vec<&str> = seq(&block["except"])
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                if cidr.contains(':') {
                    for must in ["fc00::/7", "fe80::/10"] {
                        assert!(except.contains(&must), "{what}: {cidr} must except {must}");
                    }
                } else {
                    assert_eq!(cidr, "0.0.0.0/0", "{what}: unexpected IPv4 block");
                    for must in MUST_EXCEPT {
                        assert!(except.contains(must), "{what}: {cidr} must except {must}");
                    }
                    https = true;
                }
            }
        }
    }
    assert!(https, "keyward cannot reach upstream HTTPS");
    assert!(dns, "keyward cannot resolve names");
}

// ---- the sandbox example ---------------------------------------------------------

#[test]
fn sandbox_example_points_at_the_keyward_service() {
    let docs = docs();
    let pod = &find(&docs, "Pod", "agent-triage-1").value;
    let c = &seq(&pod["spec"]["containers"])[0];
    let env = seq(&c["env"]);
    let pos = |name: &str| env.iter().position(|e| e["name"].as_str() == Some(name));
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("sandbox env {name} has no literal value"))
    };

    let svc = find(&docs, "Service", "keyward");
    let proxy = format!(
        "http://$(AGENT_ID):$(AGENT_TOKEN)@{}.{}.svc:{PROXY_PORT}",
        svc.name(),
        svc.namespace()
    );
    assert_eq!(value("HTTPS_PROXY"), proxy);
    // $(VAR) only expands variables defined earlier in the list.
    assert!(pos("AGENT_ID") < pos("HTTPS_PROXY") && pos("AGENT_TOKEN") < pos("HTTPS_PROXY"));
    let token = &env[pos("AGENT_TOKEN").unwrap()];
    assert!(
        token["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "AGENT_TOKEN comes from a Secret"
    );
    assert!(pos("NO_PROXY").is_some());
    assert_eq!(value("NODE_USE_ENV_PROXY"), "1");
    assert_eq!(value("OPENAI_API_KEY"), "keyward-placeholder");

    let mounts: Vec<&str> = seq(&c["volumeMounts"])
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
        let path = value(var);
        assert!(
            mounts.iter().any(|m| path.starts_with(&format!("{m}/"))),
            "{var}={path} is not inside a mounted volume"
        );
    }
}

// ---- kustomization, secrets, Dockerfile ----------------------------------------

#[test]
fn kustomization_lists_the_manifests_but_not_the_secret_templates() {
    let docs = docs();
    let k = &find(&docs, "Kustomization", "keyward").value;
    let resources: Vec<&str> = seq(&k["resources"])
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for r in &resources {
        assert!(
            k8s_dir().join(r).is_file(),
            "kustomization lists missing file {r}"
        );
        assert!(
            !r.starts_with("secret-"),
            "{r}: applying a template would overwrite the real Secret"
        );
    }
    for need in [
        "namespace.yaml",
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "networkpolicy.yaml",
    ] {
        assert!(
            resources.contains(&need),
            "kustomization does not list {need}"
        );
    }
    assert!(
        k["namespace"].is_null(),
        "a top-level namespace would move the sandbox policy into keyward's"
    );
}

#[test]
fn secret_templates_hold_placeholders_only() {
    for d in docs().iter().filter(|d| d.kind() == "Secret") {
        if let Some(data) = d.value["data"].as_mapping() {
            for (k, v) in data {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or(""))
                    .unwrap_or_else(|e| panic!("{}: {k:?} is not base64: {e}", d.file));
                let text = String::from_utf8_lossy(&raw);
                assert!(
                    text.starts_with("REPLACE-ME"),
                    "{}: {k:?} is not a REPLACE-ME placeholder",
                    d.file
                );
            }
        }
        if let Some(data) = d.value["stringData"].as_mapping() {
            for (k, v) in data {
                let text = v.as_str().unwrap_or("");
                assert!(
                    text.starts_with("REPLACE-ME"),
                    "{}: {k:?} is not a REPLACE-ME placeholder",
                    d.file
                );
            }
        }
    }
}

#[test]
fn no_private_key_material_under_deploy() {
    for path in files_under(&deploy_dir()) {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["PRIVATE KEY", "BEGIN CERTIFICATE"] {
            assert!(
                !text.contains(needle),
                "{} contains {needle:?}",
                path.display()
            );
        }
    }
}

#[test]
fn dockerfile_builds_locked_release_and_runs_non_root() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("FROM rust:1-bookworm AS build"), "builder stage");
    assert!(
        has("cargo build --release --locked"),
        "locked release build"
    );
    let runtime = lines.iter().rev().find(|l| l.starts_with("FROM ")).unwrap();
    assert!(
        runtime.contains("distroless/cc-debian12:nonroot") || runtime.contains("slim"),
        "runtime stage: {runtime}"
    );
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") || user.contains("nonroot"), "{user}");
    assert!(!user.starts_with("USER 0"), "{user}");
    assert!(has(r#"ENTRYPOINT ["keyward"]"#));
    assert!(has(
        r#"CMD ["serve", "--config", "/etc/keyward/keyward.toml"]"#
    ));
    assert!(has("EXPOSE 3128 3129"));
    assert!(
        deploy_dir().join("Dockerfile.dockerignore").is_file(),
        "keep target/ and keys out of the context"
    );
}

// ---- Pod-level jail: deploy/kubernetes/pod-sidecar (SPEC §12) ------------------

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    seq(list)
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name:?}"))
}

#[test]
fn pod_sidecar_example_sends_all_tcp_but_keywards_own_to_transparent_listen() {
    let docs = docs();
    let cm = find(&docs, "ConfigMap", "keyward-sidecar-config");
    let text = cm.value["data"]["keyward.toml"]
        .as_str()
        .expect("keyward-sidecar-config has keyward.toml");
    let cfg = Config::parse(text, "pod-sidecar/configmap.yaml")
        .unwrap_or_else(|e| panic!("sidecar keyward.toml: {e}"));
    let listen = cfg
        .proxy
        .transparent_listen
        .expect("transparent_listen is set");
    let agent = cfg
        .proxy
        .transparent_agent
        .clone()
        .expect("transparent_agent is set");
    assert!(
        cfg.agents.iter().any(|a| a.id == agent),
        "transparent_agent {agent:?} is not an [[agents]] entry"
    );
    assert!(
        listen.ip().is_loopback(),
        "transparent_listen stays inside the pod"
    );

    let pod = &find(&docs, "Pod", "agent-sidecar-example").value;
    let spec = &pod["spec"];
    assert_eq!(spec["shareProcessNamespace"].as_bool(), Some(false));
    let keyward = container(&spec["containers"], "keyward");
    let uid = keyward["securityContext"]["runAsUser"]
        .as_i64()
        .expect("the sidecar's uid is fixed");
    let init = container(&spec["initContainers"], "keyward-redirect");
    let script = seq(&init["args"])
        .first()
        .and_then(|v| v.as_str())
        .expect("the init container's script");
    assert!(script.contains(&format!("KEYWARD_UID={uid}")), "{script}");
    assert!(
        script.contains(&format!("TRANSPARENT_PORT={}", listen.port())),
        "{script}"
    );
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("the script lacks {needle:?}:\n{script}"))
    };
    // keyward's own connections are exempt before anything is redirected.
    let exempt = pos("-t nat -A KEYWARD_OUTPUT -m owner --uid-owner \"$KEYWARD_UID\" -j RETURN");
    let redirect = pos("-j REDIRECT --to-ports \"$TRANSPARENT_PORT\"");
    assert!(exempt < redirect);
    assert!(lines[redirect].contains("-p tcp"), "all TCP is redirected");
    // Anything not redirected is refused, v4 and v6.
    pos("iptables -A OUTPUT -j REJECT");
    pos("ip6tables -A OUTPUT -j REJECT");
    let init_caps: Vec<&str> = seq(&init["securityContext"]["capabilities"]["add"])
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(init_caps.contains(&"NET_ADMIN"), "{init_caps:?}");

    // The agent cannot undo the rules, is not keyward's uid, and holds no
    // keyward secret or proxy setting.
    let agent_c = container(&spec["containers"], "agent");
    let sc = &agent_c["securityContext"];
    assert_ne!(sc["runAsUser"].as_i64(), Some(uid));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let dropped: Vec<&str> = seq(&sc["capabilities"]["drop"])
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(dropped, vec!["ALL"]);
    assert!(seq(&sc["capabilities"]["add"]).is_empty());
    for m in seq(&agent_c["volumeMounts"]) {
        let name = m["name"].as_str().unwrap_or("");
        assert!(
            !["ca", "vault", "master-key", "config"].contains(&name),
            "the agent mounts keyward's {name}"
        );
    }
    for e in seq(&agent_c["env"]) {
        let name = e["name"].as_str().unwrap_or("").to_ascii_lowercase();
        assert!(!name.ends_with("_proxy"), "the agent needs no {name}");
        assert!(
            e["valueFrom"].is_null(),
            "the agent reads no Secret ({name})"
        );
    }
}

fn overlay_dir() -> PathBuf {
    deploy_dir().join("overlays").join("postgres")
}

/// The one YAML document of an overlay file.
fn overlay_doc(file: &str) -> Value {
    let path = overlay_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn postgres_overlay_runs_three_replicas_with_the_database_url_from_a_secret() {
    let k = overlay_doc("kustomization.yaml");
    assert_eq!(k["kind"], "Kustomization");
    let resources: Vec<&str> = seq(&k["resources"])
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        resources.contains(&"../../kubernetes"),
        "the overlay builds on the base"
    );
    assert!(k8s_dir().join("kustomization.yaml").is_file());
    let patches: Vec<&str> = seq(&k["patches"])
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    for f in resources.iter().skip(1).chain(patches.iter()) {
        assert!(
            overlay_dir().join(f).is_file(),
            "overlay lists missing file {f}"
        );
        assert!(
            !f.starts_with("secret-"),
            "{f}: would overwrite the real Secret"
        );
    }
    assert!(
        patches.contains(&"deployment-patch.yaml") && patches.contains(&"configmap-patch.yaml")
    );

    let d = overlay_doc("deployment-patch.yaml");
    assert_eq!(
        (d["kind"].as_str(), d["metadata"]["name"].as_str()),
        (Some("Deployment"), Some("keyward"))
    );
    assert_eq!(d["metadata"]["namespace"], "keyward");
    assert_eq!(d["spec"]["replicas"].as_i64(), Some(3));
    let spec = &d["spec"]["template"]["spec"];
    let c = seq(&spec["containers"])
        .iter()
        .find(|c| c["name"] == "keyward")
        .expect("the patch names the keyward container");
    let url = seq(&c["env"])
        .iter()
        .find(|e| e["name"] == "KEYWARD_DATABASE_URL")
        .expect("KEYWARD_DATABASE_URL is set");
    assert!(
        url["value"].is_null(),
        "the URL (with its password) must not be inline"
    );
    let r = &url["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (r["name"].as_str(), r["key"].as_str()),
        (Some("keyward-database"), Some("url"))
    );
    // The vault-file Secret is gone; the spool directory is writable.
    for list in [&c["volumeMounts"], &spec["volumes"]] {
        let vault = seq(list)
            .iter()
            .find(|v| v["name"] == "vault")
            .expect("vault removed");
        assert_eq!(vault["$patch"], "delete");
    }
    let spool = seq(&spec["volumes"])
        .iter()
        .find(|v| v["name"] == "spool")
        .unwrap();
    assert!(spool["emptyDir"].is_mapping());

    let s = overlay_doc("secret-database.yaml");
    assert_eq!(
        (s["kind"].as_str(), s["metadata"]["name"].as_str()),
        (Some("Secret"), Some("keyward-database"))
    );
    for (k, v) in s["stringData"].as_mapping().expect("stringData") {
        assert!(
            v.as_str().unwrap_or("").starts_with("REPLACE-ME"),
            "{k:?} is not a placeholder"
        );
    }
    let n = overlay_doc("networkpolicy-database.yaml");
    assert_eq!(n["kind"], "NetworkPolicy");
    let ports = rule_ports(&seq(&n["spec"]["egress"])[0], "database egress");
    assert_eq!(ports, vec![("TCP".to_string(), 5432)]);
}

#[test]
fn postgres_overlay_config_is_accepted_and_takes_the_url_from_the_environment() {
    let cm = overlay_doc("configmap-patch.yaml");
    assert_eq!(cm["metadata"]["name"], "keyward-config");
    let text = cm["data"]["keyward.toml"]
        .as_str()
        .expect("data.keyward.toml");
    let cfg = Config::parse(text, "configmap-patch.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.store.backend, keyward::config::Backend::Postgres);
    assert!(
        cfg.store.url.is_none(),
        "the URL comes from $KEYWARD_DATABASE_URL only"
    );
    assert!(!text.contains("postgres://"), "no URL in the ConfigMap");
    assert_eq!(cfg.store.tls, keyward::config::DbTls::VerifyFull);
    // Every file it names is on a mount of the patched Deployment.
    let d = overlay_doc("deployment-patch.yaml");
    let c = &seq(&d["spec"]["template"]["spec"]["containers"])[0];
    let mounts: Vec<&str> = seq(&c["volumeMounts"])
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for p in [cfg.store.ca.clone().unwrap(), cfg.store.spool.clone()] {
        assert!(
            mounts.iter().any(|m| p.starts_with(m)),
            "{} is on no mount of the overlay",
            p.display()
        );
    }
}
