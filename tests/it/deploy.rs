//! deploy/ is checked, not just shipped: the kustomize overlays render with kubectl, every
//! rendered manifest passes kubernetes-validate (strict, two Kubernetes versions), the pods
//! pass Pod Security "restricted", the alert rules pass promtool, and each overlay's
//! Deployment command starts with exactly the environment and files the kubelet gives it
//! and serves. compose.yaml and the Dockerfile run commands the binary accepts.
//!
//! Needs `kubectl` (KUBECTL to name another), python3 with kubernetes-validate, promtool
//! and redis-server: ./scripts/test installs them. Fails (never skips) without them.

use crate::support::pki;
use crate::support::redis as support_redis;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use certbroker::{
    cli::Cli,
    config::{CLI_ENV, EnvRole, Settings, StoreBackend, classify_env},
};
use clap::{CommandFactory, Parser};
use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use serde::Deserialize;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const OVERLAYS: [&str; 2] = ["dev", "production"];
/// kubernetes-validate 1.37 carries schemas for 1.25 to 1.37: the oldest and the newest.
const K8S_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn parses(args: &[String]) {
    let argv = std::iter::once("certbroker".to_owned()).chain(args.iter().cloned());
    if let Err(e) = Cli::try_parse_from(argv) {
        panic!("certbroker {args:?} does not parse: {e}");
    }
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// `kubectl kustomize deploy/k8s/overlays/<overlay>` as text.
fn render_text(overlay: &str) -> String {
    let dir = Path::new(ROOT).join("deploy/k8s/overlays").join(overlay);
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{} kustomize (install kubectl): {e}", kubectl()));
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn docs_of(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("each document is YAML"))
        .filter(|d| !d.is_null())
        .collect()
}

fn render(overlay: &str) -> Vec<Value> {
    docs_of(&render_text(overlay))
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// The ConfigMap the Deployment mounts as `config` (its name carries kustomize's hash).
fn config_text(docs: &[Value]) -> String {
    let pod = &kind(docs, "Deployment")["spec"]["template"]["spec"];
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some("config"))
        .expect("a config volume");
    let cm = named(
        docs,
        "ConfigMap",
        str_of(&volume["configMap"]["name"], "configMap"),
    );
    str_of(&cm["data"]["config.toml"], "config.toml").to_owned()
}

// --- rendering and schemas -------------------------------------------------------------

#[test]
fn overlays_render_with_kubectl_and_pass_kubernetes_validate() {
    let dir = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, render_text(overlay)).unwrap();
        let (ok, out) = validate(&file);
        assert!(ok, "{overlay} does not validate:\n{out}");
        let count = render(overlay).len();
        let passed = out.lines().filter(|l| l.starts_with("ok ")).count();
        let crds = out
            .lines()
            .filter(|l| l.contains("prometheus-operator"))
            .count();
        assert_eq!(crds, 2, "ServiceMonitor and PrometheusRule checked:\n{out}");
        assert_eq!(
            passed,
            (count - crds) * K8S_VERSIONS.len() + crds,
            "every resource checked against every version:\n{out}"
        );
    }
    // The validator rejects what the API server would: a misspelt field fails.
    let bad = render_text("production").replacen(
        "allowPrivilegeEscalation",
        "allowPrivilegeEscalaton",
        1,
    );
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    let (ok, out) = validate(&file);
    assert!(!ok && out.contains("allowPrivilegeEscalaton"), "{out}");
    let bad = render_text("production").replacen("interval: 30s", "intervall: 30s", 1);
    std::fs::write(&file, bad).unwrap();
    let (ok, out) = validate(&file);
    assert!(!ok && out.contains("intervall"), "{out}");
}

fn validate(file: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(Path::new(ROOT).join("tests/python/validate_k8s.py"))
        .arg(file)
        .args(K8S_VERSIONS)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The pod-level and container-level fields Pod Security "restricted" requires, for every
/// workload of every overlay (the broker and Redis).
#[test]
fn every_pod_passes_pod_security_restricted() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let workloads: Vec<&Value> = docs
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")))
            .collect();
        assert!(!workloads.is_empty());
        for w in workloads {
            let name = format!("{overlay}: {}", w["metadata"]["name"].as_str().unwrap());
            let pod = &w["spec"]["template"]["spec"];
            let psc = &pod["securityContext"];
            for k in ["hostNetwork", "hostPID", "hostIPC"] {
                assert_ne!(pod[k].as_bool(), Some(true), "{name}: {k}");
            }
            for v in seq(&pod["volumes"]) {
                assert!(v.get("hostPath").is_none(), "{name}: hostPath volume");
            }
            let containers: Vec<&Value> = seq(&pod["containers"])
                .iter()
                .chain(seq(&pod["initContainers"]))
                .collect();
            for c in containers {
                let sc = &c["securityContext"];
                let who = format!("{name}/{}", c["name"].as_str().unwrap());
                let non_root = sc["runAsNonRoot"]
                    .as_bool()
                    .or(psc["runAsNonRoot"].as_bool());
                assert_eq!(non_root, Some(true), "{who}: runAsNonRoot");
                let uid = sc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64());
                assert_ne!(uid, Some(0), "{who}: runAsUser 0");
                assert_eq!(
                    sc["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{who}: allowPrivilegeEscalation"
                );
                assert_ne!(sc["privileged"].as_bool(), Some(true), "{who}: privileged");
                assert_eq!(
                    strings(&sc["capabilities"]["drop"]),
                    ["ALL"],
                    "{who}: capabilities.drop"
                );
                let add = seq(&sc["capabilities"]["add"]);
                assert!(
                    add.iter().all(|a| a.as_str() == Some("NET_BIND_SERVICE")),
                    "{who}: capabilities.add {add:?}"
                );
                let seccomp = sc["seccompProfile"]["type"]
                    .as_str()
                    .or(psc["seccompProfile"]["type"].as_str());
                assert!(
                    matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
                    "{who}: seccompProfile {seccomp:?}"
                );
                assert_eq!(
                    sc["readOnlyRootFilesystem"].as_bool(),
                    Some(true),
                    "{who}: readOnlyRootFilesystem"
                );
                for p in seq(&c["ports"]) {
                    assert!(p.get("hostPort").is_none(), "{who}: hostPort");
                }
            }
        }
    }
}

// --- shape of each overlay -------------------------------------------------------------

#[test]
fn overlays_are_shaped_for_their_environment() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let deployment = named(&docs, "Deployment", "certbroker");
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let selector = &deployment["spec"]["selector"]["matchLabels"];
        for (k, v) in selector.as_mapping().unwrap() {
            assert_eq!(&pod_labels[k.as_str().unwrap()], v, "{overlay}: selector");
        }
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args = strings(&container["args"]);
        parses(&args);
        let ports: BTreeMap<String, u64> = seq(&container["ports"])
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();

        // Services: one with a cluster IP (metrics, port-forward), one headless for
        // client-side gRPC balancing; both select the broker's pods.
        let svc = named(&docs, "Service", "certbroker");
        let headless = named(&docs, "Service", "certbroker-headless");
        assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
        assert!(svc["spec"].get("clusterIP").is_none());
        for s in [svc, headless] {
            assert_eq!(
                &s["spec"]["selector"], selector,
                "{overlay}: Service selects pods"
            );
            for p in seq(&s["spec"]["ports"]) {
                let target = p["targetPort"].as_str().expect("named targetPort");
                assert!(ports.contains_key(target), "{overlay}: targetPort {target}");
            }
        }
        // The ServiceMonitor scrapes the admin port of the cluster-IP Service only.
        let sm = kind(&docs, "ServiceMonitor");
        for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
            assert_eq!(&svc["metadata"]["labels"][k.as_str().unwrap()], v);
        }
        assert_ne!(
            headless["metadata"]["labels"]["app.kubernetes.io/component"],
            sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
            "the headless Service would be scraped twice"
        );
        assert_eq!(sm["spec"]["endpoints"][0]["port"].as_str(), Some("admin"));
        assert!(
            seq(&svc["spec"]["ports"])
                .iter()
                .any(|p| p["name"].as_str() == Some("admin"))
        );
        assert!(seq(&kind(&docs, "PrometheusRule")["spec"]["groups"]).len() == 1);

        let text = config_text(&docs);
        // Secrets the config names by environment variable are set in the pod.
        let env: Vec<&str> = seq(&container["env"])
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        let toml: toml_value::Value = Figment::from(Toml::string(&text)).extract().unwrap();
        let refs = toml_value::env_refs(&toml);
        assert!(
            refs.iter().any(|r| r == "CERTBROKER_STI_PA_PASSWORD"),
            "{refs:?}"
        );
        for var in refs {
            assert!(
                env.contains(&var.as_str()),
                "{overlay}: {var} is not set: {env:?}"
            );
        }
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
        let readiness = &container["readinessProbe"];
        match overlay {
            "dev" => {
                let s = Settings::from_toml(&text).expect("the dev config loads");
                assert!(matches!(s.store.backend, StoreBackend::Memory));
                assert_eq!(replicas, 1, "the memory store is one process");
                assert!(s.server.tls.is_none());
                assert_eq!(
                    readiness["grpc"]["port"].as_u64(),
                    Some(u64::from(s.server.listen.port()))
                );
                assert!(
                    docs.iter()
                        .all(|d| d["kind"].as_str() != Some("StatefulSet"))
                );
            }
            _ => {
                // The Redis URL and the keyring key come from Secrets through the env.
                let s = Settings::from_figment(
                    Figment::from(Serialized::defaults(Settings::default()))
                        .merge(Toml::string(&text))
                        .merge(Toml::string(
                            "[store]\nurl = \"redis://h:6379\"\n[store.keyring.keys]\nv1 = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n",
                        )),
                )
                .expect("the production config loads");
                assert!(matches!(s.store.backend, StoreBackend::Redis));
                let tls = s.server.tls.as_ref().expect("mTLS");
                assert!(tls.client_ca.is_some(), "client certificates required");
                assert!(!s.policy.is_empty(), "mTLS callers need a policy");
                assert!(replicas >= 3);
                // The kubelet's gRPC probe cannot present a client certificate.
                assert!(readiness.get("grpc").is_none());
                assert_eq!(readiness["httpGet"]["path"].as_str(), Some("/readyz"));
                assert_eq!(readiness["httpGet"]["port"].as_str(), Some("admin"));
                let admin = s.telemetry.admin_listen.expect("admin listener");
                assert_eq!(ports["admin"], u64::from(admin.port()));
                let pdb = kind(&docs, "PodDisruptionBudget");
                assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
                let unavailable = pdb["spec"]["maxUnavailable"].as_u64().unwrap_or(0);
                let min = pdb["spec"]["minAvailable"].as_u64().unwrap_or(0);
                assert!(unavailable >= 1 || min < replicas, "the PDB allows a drain");
                let anti = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
                let term =
                    &anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
                assert_eq!(term["topologyKey"].as_str(), Some("kubernetes.io/hostname"));
                assert_eq!(&term["labelSelector"]["matchLabels"], selector);
                let redis = named(&docs, "StatefulSet", "certbroker-redis");
                assert_eq!(
                    redis["spec"]["serviceName"].as_str(),
                    Some("certbroker-redis")
                );
                named(&docs, "Service", "certbroker-redis");
            }
        }
    }
}

/// `*_env` keys of a configuration file, read independently of the loader.
mod toml_value {
    pub(crate) use figment::value::Value;

    pub(crate) fn env_refs(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        match v {
            Value::Dict(_, d) => {
                for (k, v) in d {
                    match v {
                        Value::String(_, s) if k.ends_with("_env") => out.push(s.clone()),
                        _ => out.extend(env_refs(v)),
                    }
                }
            }
            Value::Array(_, items) => items.iter().for_each(|v| out.extend(env_refs(v))),
            _ => {}
        }
        out
    }
}

/// The README's expiry alert once compared two sides with different label sets and could
/// never fire; the rendered rule fires when a certificate has under an hour left (its
/// notAfter gauge minus `time()`), and every rule passes `promtool check rules`. The full
/// rule tests run in tests/it/telemetry.rs.
#[test]
fn prometheus_rules_pass_promtool() {
    let docs = render("production");
    let spec = &kind(&docs, "PrometheusRule")["spec"];
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml_ng::to_string(spec).unwrap()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (Debian prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let test = dir.path().join("test.yaml");
    std::fs::write(
        &test,
        r#"rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'certbroker_certificate_expiration_timestamp_seconds{job="certbroker",instance="a",key="k",identifiers="spc 1234",pool="default",ca="devca"}'
        values: '5000x40'
    alert_rule_test:
      - eval_time: 0m
        alertname: CertbrokerCertificateExpiring
        exp_alerts: []
      - eval_time: 30m
        alertname: CertbrokerCertificateExpiring
        exp_alerts:
          - exp_labels: {severity: critical, key: k, identifiers: spc 1234, pool: default, ca: devca}
            exp_annotations:
              summary: 'Certificate for spc 1234 (pool default, CA devca) expires within the hour.'
"#,
    )
    .unwrap();
    let out = Command::new("promtool")
        .current_dir(dir.path())
        .args(["test", "rules", "test.yaml"])
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- the kubelet's environment ---------------------------------------------------------

/// Secret contents the test stands in for; a manifest that needs another Secret or key
/// fails here (and the README's list of Secrets is out of date).
struct Secrets {
    data: BTreeMap<(String, String), Vec<u8>>,
    ca: pki::TestCa,
}

impl Secrets {
    fn new() -> Self {
        let ca = pki::TestCa::new("cluster CA");
        let server = ca.server();
        let account = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let mut data = BTreeMap::new();
        let mut put = |s: &str, k: &str, v: Vec<u8>| {
            data.insert((s.to_owned(), k.to_owned()), v);
        };
        put("certbroker-sti-pa", "password", b"sti-pa-password".to_vec());
        put(
            "certbroker-accounts",
            "primary-account.pem",
            account.into_bytes(),
        );
        put(
            "certbroker-redis",
            "password",
            b"redis-password-7f3a".to_vec(),
        );
        put(
            "certbroker-keyring",
            "v1",
            b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_vec(),
        );
        put("certbroker-tls", "tls.crt", server.cert_pem.into_bytes());
        put("certbroker-tls", "tls.key", server.key_pem.into_bytes());
        put("certbroker-tls", "ca.crt", ca.pem.clone().into_bytes());
        Self { data, ca }
    }

    fn get(&self, secret: &str, key: &str) -> &[u8] {
        self.data
            .get(&(secret.to_owned(), key.to_owned()))
            .unwrap_or_else(|| panic!("the manifest needs Secret {secret} key {key}"))
    }

    fn keys(&self, secret: &str) -> Vec<(&str, &[u8])> {
        let found: Vec<_> = self
            .data
            .iter()
            .filter(|((s, _), _)| s == secret)
            .map(|((_, k), v)| (k.as_str(), v.as_slice()))
            .collect();
        assert!(
            !found.is_empty(),
            "the manifest mounts unknown Secret {secret}"
        );
        found
    }
}

/// (name, port, protocol) of one Service port.
type ServicePort = (Option<String>, u64, String);

/// The service-link variables the kubelet sets for every Service with a cluster IP in the
/// pod's namespace (enableServiceLinks defaults to true), plus the `kubernetes` Service's.
/// Headless and ExternalName Services get none. Cluster IPs are made up: nothing dials them.
fn service_links(docs: &[Value]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut services: Vec<(String, String, Vec<ServicePort>)> = vec![(
        "kubernetes".into(),
        "10.96.0.1".into(),
        vec![(Some("https".into()), 443, "TCP".into())],
    )];
    for (i, s) in docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Service"))
        .enumerate()
    {
        if s["spec"]["clusterIP"].as_str() == Some("None")
            || s["spec"]["type"].as_str() == Some("ExternalName")
        {
            continue;
        }
        let ports = seq(&s["spec"]["ports"])
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().map(str::to_owned),
                    p["port"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                )
            })
            .collect();
        let name = s["metadata"]["name"].as_str().unwrap().to_owned();
        services.push((name, format!("10.96.1.{}", i + 10), ports));
    }
    for (name, ip, ports) in services {
        let n = name.to_uppercase().replace('-', "_");
        let (_, first, first_proto) = &ports[0];
        env.push((format!("{n}_SERVICE_HOST"), ip.clone()));
        env.push((format!("{n}_SERVICE_PORT"), first.to_string()));
        for (pname, port, _) in &ports {
            if let Some(pname) = pname {
                let p = pname.to_uppercase().replace('-', "_");
                env.push((format!("{n}_SERVICE_PORT_{p}"), port.to_string()));
            }
        }
        env.push((
            format!("{n}_PORT"),
            format!("{}://{ip}:{first}", first_proto.to_lowercase()),
        ));
        for (_, port, proto) in &ports {
            let base = format!("{n}_PORT_{port}_{proto}");
            let lower = proto.to_lowercase();
            env.push((base.clone(), format!("{lower}://{ip}:{port}")));
            env.push((format!("{base}_PROTO"), lower));
            env.push((format!("{base}_PORT"), port.to_string()));
            env.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    env
}

/// The kubelet's `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
/// anything else stays as written.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A container's environment as the kubelet builds it: service links first, then the
/// container's `env` in order (`value` with `$(VAR)` expansion over the earlier entries
/// and the service links, `secretKeyRef`, `fieldRef`). HOSTNAME and PATH (the image's)
/// complete it.
fn container_env(
    docs: &[Value],
    container: &Value,
    secrets: &Secrets,
    pod: &str,
) -> Vec<(String, String)> {
    let mut env = service_links(docs);
    env.push(("HOSTNAME".into(), pod.into()));
    env.push((
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ));
    for e in seq(&container["env"]) {
        let name = str_of(&e["name"], "env name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let v = secrets.get(str_of(&r["name"], "secret"), str_of(&r["key"], "key"));
            String::from_utf8(v.to_vec()).unwrap()
        } else if let Some(r) = e["valueFrom"].get("fieldRef") {
            match str_of(&r["fieldPath"], "fieldPath") {
                "metadata.name" => pod.into(),
                "metadata.namespace" => "default".into(),
                "status.podIP" => "127.0.0.1".into(),
                other => panic!("fieldRef {other} not emulated"),
            }
        } else {
            panic!("env {name}: source not emulated: {e:?}");
        };
        env.retain(|(k, _)| k != &name);
        env.push((name, value));
    }
    env
}

/// Files and paths of one container: each volumeMount becomes a directory under `root`
/// holding what the kubelet would project there (ConfigMap keys, Secret keys with their
/// mode, an empty emptyDir). Returns (mountPath, host directory), longest path first.
fn mount_volumes(
    docs: &[Value],
    pod: &Value,
    container: &Value,
    secrets: &Secrets,
    root: &Path,
) -> Vec<(String, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let mut mounts = Vec::new();
    for m in seq(&container["volumeMounts"]) {
        let mount = str_of(&m["mountPath"], "mountPath").to_owned();
        let vname = str_of(&m["name"], "volume name");
        let volume = seq(&pod["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(vname))
            .unwrap_or_else(|| panic!("volumeMount {vname} names no volume"));
        let dir = root.join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(cm) = volume.get("configMap") {
            let cm = named(docs, "ConfigMap", str_of(&cm["name"], "configMap name"));
            for (k, v) in cm["data"].as_mapping().unwrap() {
                std::fs::write(dir.join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
            }
        } else if let Some(s) = volume.get("secret") {
            let mode = s["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            for (k, v) in secrets.keys(str_of(&s["secretName"], "secretName")) {
                let file = dir.join(k);
                std::fs::write(&file, v).unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        } else if volume.get("emptyDir").is_none() {
            panic!("volume {vname}: source not emulated");
        }
        mounts.push((mount, dir));
    }
    mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    mounts
}

/// Replaces each absolute path under a mountPath by the same path under its directory, in
/// one pass (the directories may themselves lie under a mountPath such as /tmp).
fn rewrite_paths(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = String::new();
    let mut i = 0;
    'outer: while i < text.len() {
        let starts_path = text.as_bytes()[i] == b'/'
            && (i == 0
                || !text.as_bytes()[i - 1].is_ascii_alphanumeric()
                    && text.as_bytes()[i - 1] != b'/');
        if starts_path {
            for (mount, dir) in mounts {
                let rest = &text[i..];
                if rest.starts_with(mount.as_str())
                    && rest[mount.len()..].chars().next().is_none_or(|c| {
                        c == '/' || !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.')
                    })
                {
                    out.push_str(&dir.display().to_string());
                    i += mount.len();
                    continue 'outer;
                }
            }
        }
        let c = text[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The image's ENTRYPOINT (deploy/Dockerfile), resolved to the binary cargo built.
fn entrypoint() -> Vec<String> {
    let text = read("deploy/Dockerfile");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(line).expect("ENTRYPOINT in exec form");
    assert_eq!(argv[0], "/usr/local/bin/certbroker");
    let mut argv = argv;
    argv[0] = env!("CARGO_BIN_EXE_certbroker").to_owned();
    argv
}

struct Started {
    child: Child,
    /// containerPort name → the loopback port it was mapped to.
    ports: BTreeMap<String, u16>,
    stderr: PathBuf,
    _root: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Started {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the broker exited ({status}):\n{}", self.log());
        }
    }
}

/// Starts the overlay's Deployment container as the kubelet would: its command (image
/// ENTRYPOINT + args) with exactly the kubelet's environment (env_clear first) and its
/// volumes. What a pod has and a test process does not is mapped, and only that: each
/// mountPath to a directory under a temp root (rewritten in args and in mounted files, as
/// a mount namespace would), each containerPort to a free loopback port (the pod's own
/// network namespace), and `dns` host:port pairs to loopback ports (cluster DNS).
fn start_deployment(docs: &[Value], secrets: &Secrets, dns: &[(&str, u16)]) -> Started {
    let deployment = named(docs, "Deployment", "certbroker");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(
        container.get("command").is_none(),
        "the image's ENTRYPOINT runs"
    );
    let root = tempfile::tempdir().unwrap();
    let mounts = mount_volumes(docs, pod, container, secrets, root.path());
    let mut ports = BTreeMap::new();
    let mut port_map = Vec::new();
    for p in seq(&container["ports"]) {
        let host = free_port();
        ports.insert(p["name"].as_str().unwrap().to_owned(), host);
        port_map.push((p["containerPort"].as_u64().unwrap(), host));
    }
    let rewrite = |text: &str| -> String {
        let mut t = rewrite_paths(text, &mounts);
        for (container_port, host) in &port_map {
            t = t.replace(
                &format!("0.0.0.0:{container_port}"),
                &format!("127.0.0.1:{host}"),
            );
        }
        for (host_port, local) in dns {
            t = t.replace(host_port, &format!("127.0.0.1:{local}"));
        }
        t
    };
    // Rewrite paths and ports inside the mounted ConfigMap files.
    for (_, dir) in &mounts {
        for f in std::fs::read_dir(dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&f).unwrap();
                let new = rewrite(&text);
                assert!(
                    port_map
                        .iter()
                        .all(|(_, h)| new.contains(&format!("127.0.0.1:{h}"))),
                    "every containerPort is a listener of the config:\n{text}"
                );
                std::fs::write(&f, new).unwrap();
            }
        }
    }
    let pod_name = "certbroker-7d9c8b6f5-x2v4q";
    let env: Vec<(String, String)> = container_env(docs, container, secrets, pod_name)
        .into_iter()
        .map(|(k, v)| (k, rewrite(&v)))
        .collect();
    // The point of the exercise: this environment holds CERTBROKER_ names that are not
    // configuration (service links, the STI-PA Secret).
    assert!(env.iter().any(|(k, _)| k == "CERTBROKER_SERVICE_HOST"));
    assert!(
        env.iter()
            .any(|(k, _)| k == "CERTBROKER_PORT_50051_TCP_ADDR")
    );
    assert!(env.iter().any(|(k, _)| k == "CERTBROKER_STI_PA_PASSWORD"));
    let mut argv = entrypoint();
    argv.extend(
        strings(&container["args"])
            .iter()
            .map(|a| rewrite(&expand(a, &env))),
    );
    let stderr = root.path().join("stderr.log");
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start the broker");
    Started {
        child,
        ports,
        stderr,
        _root: root,
    }
}

/// Polls `probe` every 50 ms until it returns Some or 30 s pass, failing if the broker exits.
async fn until<T, F: Future<Output = Option<T>>>(
    broker: &mut Started,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        broker.assert_running();
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 30 s:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1.1 GET on loopback: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

async fn grpc_health(channel: tonic::transport::Channel) -> Option<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(reply.into_inner().status)
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// The dev overlay's pod: the kubelet's environment (service links for `certbroker`, the
/// STI-PA Secret) does not stop start-up, and the readiness probe (gRPC health) passes.
#[tokio::test]
async fn dev_deployment_starts_with_the_kubelets_environment() {
    let docs = render("dev");
    let secrets = Secrets::new();
    let mut broker = start_deployment(&docs, &secrets, &[]);
    let probe = &named(&docs, "Deployment", "certbroker")["spec"]["template"]["spec"]["containers"]
        [0]["readinessProbe"];
    let container_port = probe["grpc"]["port"].as_u64().expect("a gRPC probe");
    assert_eq!(container_port, 50051);
    let port = broker.ports["grpc"];
    let status = until(&mut broker, "gRPC health SERVING", || async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        grpc_health(channel).await.filter(|s| *s == SERVING)
    })
    .await;
    assert_eq!(status, SERVING);
    let admin = broker.ports["admin"];
    // 503 while the start-up warm-up still runs and no CA works yet; 200 once it has ended
    // (the manifest's CA is not reachable from here, so the warm-up ends failed).
    let (code, _) = until(&mut broker, "/readyz", || async move {
        http_get(admin, "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(code, 200);
}

/// The production overlay's pod next to its Redis (the StatefulSet's own arguments, with
/// its password from the Secret, on a real redis-server): the readiness probe (`/readyz` on
/// the admin port) answers 200 with the shared store reachable, and gRPC health answers
/// SERVING over mTLS to a client certificate from the cluster CA.
#[tokio::test]
async fn production_deployment_starts_with_the_kubelets_environment_and_its_redis() {
    let docs = render("production");
    let secrets = Secrets::new();

    let redis_set = named(&docs, "StatefulSet", "certbroker-redis");
    let redis_container = &redis_set["spec"]["template"]["spec"]["containers"][0];
    let redis_env = container_env(&docs, redis_container, &secrets, "certbroker-redis-0");
    let data_mount = seq(&redis_container["volumeMounts"])[0]["mountPath"]
        .as_str()
        .unwrap()
        .to_owned();
    let redis_args: Vec<String> = strings(&redis_container["args"])
        .iter()
        .map(|a| expand(a, &redis_env).replace(&data_mount, "{dir}"))
        .collect();
    assert!(
        redis_args.iter().any(|a| a == "redis-password-7f3a"),
        "Redis takes its password from the Secret: {redis_args:?}"
    );
    let redis = support_redis::RedisServer::start_with(
        &redis_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        redis.raw("PING").starts_with("-NOAUTH"),
        "Redis requires its password"
    );

    let mut broker = start_deployment(&docs, &secrets, &[("certbroker-redis:6379", redis.port())]);
    let probe = &named(&docs, "Deployment", "certbroker")["spec"]["template"]["spec"]["containers"]
        [0]["readinessProbe"]["httpGet"];
    let path = probe["path"].as_str().unwrap().to_owned();
    let admin = broker.ports[probe["port"].as_str().unwrap()];
    let (code, body) = until(&mut broker, "readiness probe", || {
        let path = path.clone();
        async move { http_get(admin, &path).await.filter(|(c, _)| *c == 200) }
    })
    .await;
    assert_eq!(code, 200);
    // The first line is the verdict (no "shared store unreachable" on it); one line per CA
    // follows.
    assert_eq!(
        body.lines().next().map(str::trim),
        Some("ready"),
        "the shared store answers: {body}"
    );
    let keys = redis.raw("AUTH redis-password-7f3a");
    assert!(keys.starts_with("+OK"), "{keys}");

    let port = broker.ports["grpc"];
    let client = secrets
        .ca
        .client("signer-1", &["signer-1.sti-as.example.net"]);
    let ca_pem = secrets.ca.pem.clone();
    let status = until(&mut broker, "gRPC health over mTLS", || {
        let (client, ca_pem) = (client.clone(), ca_pem.clone());
        async move {
            use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .identity(Identity::from_pem(client.cert_pem, client.key_pem))
                .domain_name("localhost");
            let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .ok()?
                .tls_config(tls)
                .ok()?
                .connect()
                .await
                .ok()?;
            grpc_health(channel).await.filter(|s| *s == SERVING)
        }
    })
    .await;
    assert_eq!(status, SERVING);
    // Plaintext gRPC is refused: the port is TLS-only.
    let plain = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        grpc_health(channel).await
    };
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), plain)
            .await
            .ok()
            .flatten(),
        None
    );
}

/// Every `CERTBROKER_*` variable the CLI reads is one the config loader leaves alone; the
/// lists cannot drift apart.
#[test]
fn cli_environment_variables_are_not_config_overrides() {
    fn walk(cmd: &clap::Command, found: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                found.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, found);
        }
    }
    let mut found = BTreeSet::new();
    walk(&Cli::command(), &mut found);
    let ours: Vec<&String> = found
        .iter()
        .filter(|e| e.starts_with("CERTBROKER_"))
        .collect();
    assert!(ours.iter().any(|e| *e == "CERTBROKER_ADDR"), "{ours:?}");
    for e in ours {
        assert!(
            CLI_ENV.contains(&e.as_str()),
            "{e} missing from config::CLI_ENV"
        );
        assert_eq!(classify_env(e, &BTreeSet::new()), EnvRole::NotConfig, "{e}");
    }
}

// --- compose and the Dockerfile --------------------------------------------------------

#[test]
fn compose_runs_the_broker_on_its_redis_and_pebble() {
    let compose: Value = serde_yaml_ng::from_str(&read("deploy/compose.yaml")).expect("YAML");
    let services = compose["services"].as_mapping().expect("services");
    assert!(services.len() >= 3, "broker, Redis and Pebble");
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        match (svc.get("image"), svc.get("build")) {
            (Some(image), _) => {
                let image = image.as_str().unwrap();
                assert!(
                    image.contains(name) && !image.contains(' '),
                    "{name}: image {image:?}"
                );
            }
            (None, Some(build)) => {
                let dockerfile = build["dockerfile"].as_str().expect("dockerfile");
                let context = Path::new(ROOT)
                    .join("deploy")
                    .join(build["context"].as_str().expect("context"));
                assert!(
                    context.join(dockerfile).exists(),
                    "{name}: {dockerfile} exists"
                );
            }
            (None, None) => panic!("{name} names neither an image nor a build"),
        }
    }
    let broker = &compose["services"]["certbroker"];
    let command = strings(&broker["command"]);
    parses(&command);
    assert!(
        !command.iter().any(|a| a == "--dev"),
        "not dev mode: {command:?}"
    );
    let config_path = &command[command.iter().position(|a| a == "--config").unwrap() + 1];
    // "./config/compose.toml:/etc/certbroker/config.toml:ro"
    let volumes = strings(&broker["volumes"]);
    let source = volumes
        .iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            (dst == config_path).then(|| src.to_owned())
        })
        .expect("the --config file is mounted");
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy").join(source)).unwrap();
    // The keyring key is in the environment compose sets (from the host's variable).
    let env = broker["environment"].as_mapping().expect("environment");
    let keyring_var = env
        .keys()
        .map(|k| k.as_str().unwrap())
        .find(|k| k.starts_with("CERTBROKER_STORE__KEYRING__KEYS__"))
        .expect("the keyring key from the environment");
    let id = keyring_var
        .trim_start_matches("CERTBROKER_STORE__KEYRING__KEYS__")
        .to_lowercase();
    let s = Settings::from_figment(
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(&text))
            .merge(Toml::string(&format!(
                "[store.keyring.keys]\n{id} = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n"
            ))),
    )
    .expect("the compose config loads");
    assert!(matches!(s.store.backend, StoreBackend::Redis));
    let redis_url = url::Url::parse(s.store.url.as_deref().unwrap()).unwrap();
    assert_eq!(
        redis_url.host_str(),
        Some("redis"),
        "the compose redis service"
    );
    let ca = &s.ca[0];
    assert_eq!(
        ca.directory.host_str(),
        Some("pebble"),
        "the compose pebble service"
    );
    // Pebble's root reaches the broker through a volume both mount.
    let roots = ca
        .trust_roots
        .as_ref()
        .expect("Pebble's root")
        .display()
        .to_string();
    let shared = volumes
        .iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            roots.starts_with(dst).then(|| src.to_owned())
        })
        .expect("trust_roots lies in a mounted volume");
    let pebble_volumes = strings(&compose["services"]["pebble"]["volumes"]);
    assert!(
        pebble_volumes
            .iter()
            .any(|v| v.starts_with(&format!("{shared}:"))),
        "pebble mounts {shared}"
    );
    assert!(compose["volumes"].get(shared.as_str()).is_some());
    let depends = strings(&broker["depends_on"]);
    for d in ["redis", "pebble"] {
        assert!(depends.iter().any(|x| x == d), "depends on {d}");
    }
}

#[test]
fn dockerfile_caches_dependencies_runs_non_root_and_exposes_both_ports() {
    let text = read("deploy/Dockerfile");
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage build");
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "0");
    assert_ne!(user.trim(), "root");
    let cmd = text
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec (JSON) form");
    parses(&args);
    // Dependency layer: a cargo build before the sources are copied.
    let lines: Vec<&str> = text.lines().collect();
    let copy_src = lines
        .iter()
        .position(|l| l.starts_with("COPY src"))
        .expect("COPY src");
    assert!(
        lines[..copy_src].iter().any(|l| l.contains("cargo build")),
        "dependencies build before COPY src"
    );
    assert!(
        !text.contains("COPY . ."),
        "the whole context would bust the cache"
    );
    assert!(!text.contains("protobuf-compiler"), "no protoc needed");
    let exposed: Vec<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let dev = Settings::from_toml(&config_text(&render("dev"))).unwrap();
    assert!(exposed.contains(&dev.server.listen.port()), "{exposed:?}");
    assert!(
        exposed.contains(&dev.telemetry.admin_listen.unwrap().port()),
        "{exposed:?}"
    );
    // The build context is the repository root: its .dockerignore keeps out target/ and .git.
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for must in ["target", ".git"] {
        assert!(
            ignored.contains(&must),
            ".dockerignore lacks {must}: {ignored:?}"
        );
    }
}

#[test]
fn example_config_loads_with_its_keys() {
    let s = Settings::from_toml(&read("deploy/config/example.toml")).expect("example loads");
    assert!(!s.ca.is_empty());
}
