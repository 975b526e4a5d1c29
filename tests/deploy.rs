//! deploy/ is checked, not just shipped: the manifests parse, the configuration they embed
//! loads, and the commands they run are commands the binary accepts.

use std::path::Path;

use certbroker::{cli::Cli, config::Settings};
use clap::Parser;
use serde::Deserialize;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

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

fn k8s_docs() -> Vec<Value> {
    let text = read("deploy/k8s/certbroker.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("each document is YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s/certbroker.yaml"))
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let docs = k8s_docs();
    let config_text = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .expect("ConfigMap carries config.toml");
    let config = Settings::from_toml(config_text).expect("the ConfigMap's config loads");

    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    parses(&args);
    let mount = config_mount(container);
    assert!(
        args.iter().any(|a| a.starts_with(&mount)),
        "--config {args:?} must live under the ConfigMap mount {mount}"
    );

    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    let grpc = u64::from(config.server.listen.port());
    assert!(
        ports.contains(&grpc),
        "container exposes server.listen {grpc}: {ports:?}"
    );
    if let Some(admin) = config.telemetry.admin_listen {
        assert!(
            ports.contains(&u64::from(admin.port())),
            "admin port exposed"
        );
    }
    assert_eq!(
        container["readinessProbe"]["grpc"]["port"].as_u64(),
        Some(grpc),
        "readiness asks the gRPC health service"
    );
    // Secrets the config names by environment variable are provided by the pod.
    let env: Vec<String> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    for ca in &config.ca {
        if let Some(var) = ca.sti_pa.as_ref().and_then(|p| p.password_env.clone()) {
            assert!(env.contains(&var), "{var} is not set in the pod: {env:?}");
        }
    }

    let selector = &deployment["spec"]["selector"]["matchLabels"];
    for k in ["Service", "PodDisruptionBudget"] {
        let doc = kind(&docs, k);
        let sel = if k == "Service" {
            &doc["spec"]["selector"]
        } else {
            &doc["spec"]["selector"]["matchLabels"]
        };
        assert_eq!(sel, selector, "{k} selects the Deployment's pods");
    }
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    let min_available = kind(&docs, "PodDisruptionBudget")["spec"]["minAvailable"]
        .as_u64()
        .unwrap();
    assert!(
        min_available < replicas,
        "the PDB must allow a voluntary disruption"
    );
}

fn config_mount(container: &Value) -> String {
    container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("config"))
        .and_then(|m| m["mountPath"].as_str())
        .expect("a config volume mount")
        .to_owned()
}

#[test]
fn compose_names_images_and_commands_that_exist() {
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
                parses(&strings(&svc["command"]));
            }
            (None, None) => panic!("{name} names neither an image nor a build"),
        }
    }
    let depends = strings(&compose["services"]["certbroker"]["depends_on"]);
    for d in depends {
        assert!(
            services.contains_key(d.as_str()),
            "depends on unknown service {d}"
        );
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_runs_a_valid_command() {
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
}

#[test]
fn example_config_loads_with_its_keys() {
    let s = Settings::from_toml(&read("deploy/config/example.toml")).expect("example loads");
    assert!(!s.ca.is_empty());
}
