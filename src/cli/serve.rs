//! `certbroker serve`: the broker, from a config file or, with `--dev`, against an embedded
//! STI-PA + STI-CA with an in-memory store.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

use crate::{app::App, config::Settings, devca, telemetry};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, env = "CERTBROKER_CONFIG", required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Development mode: embedded STI-PA + STI-CA on free loopback ports, in-memory store.
    #[arg(long)]
    dev: bool,
    /// gRPC listen address; overrides `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::load(args.config.as_deref())?;
    telemetry::init(&settings.telemetry);
    if let Some(listen) = args.listen {
        settings.server.listen = listen;
    }

    // Kept alive for the whole run: dropping it stops the embedded CA.
    let mut dev_ca = None;
    if args.dev {
        let state_dir = std::env::temp_dir().join(format!("certbroker-dev-{}", std::process::id()));
        // dns identifiers: the broker's http-01 responder and the devca's validation meet
        // on a free loopback port (freed here, bound by the responder on first use).
        let http01_port = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("picking a port for http-01")?
            .port();
        let handle = devca::DevCa::start(devca::DevCaSettings {
            state_dir: Some(state_dir.join("devca")),
            http01_port,
            ..devca::DevCaSettings::default()
        })
        .await
        .context("starting the embedded devca")?;
        settings.ca = vec![super::devca::ca_settings_for(&handle, &state_dir)];
        settings.store.backend = crate::config::StoreBackend::Memory;
        dev_ca = Some((handle, state_dir));
    }

    let app = App::build(&settings).await?;
    let listener = TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", settings.server.listen))?;
    let addr = listener.local_addr()?;
    match &dev_ca {
        Some((ca, _)) => print_dev_banner(addr, ca),
        None => println!("certbroker listening on {addr}"),
    }
    tracing::info!(%addr, "certbroker listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(app.serve(listener, async {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        () = super::shutdown_signal() => {}
        res = &mut server => return res.context("server task")?,
    }
    // Stop accepting; in-flight requests get the grace period to finish.
    let _ = stop_tx.send(());
    let grace = settings.server.shutdown_grace;
    match tokio::time::timeout(grace, &mut server).await {
        Ok(res) => res.context("server task")??,
        Err(_) => tracing::warn!(
            ?grace,
            "requests still in flight after the grace period; exiting"
        ),
    }
    if let Some((ca, state_dir)) = dev_ca {
        ca.shutdown().await;
        // Dev mode's keys and roots are throwaway: leave nothing behind in the temp dir.
        if let Err(e) = std::fs::remove_dir_all(&state_dir) {
            tracing::warn!(error = %e, dir = %state_dir.display(), "could not remove the dev state");
        }
    }
    telemetry::shutdown();
    Ok(())
}

fn print_dev_banner(addr: SocketAddr, ca: &devca::DevCaHandle) {
    println!(
        "certbroker (dev mode) listening on {addr}\n\
         embedded STI-CA directory: {dir}\n\
         embedded STI-PA:           {pa}\n\
         devca trust root:          {root}\n\
         \n\
         try:\n  \
           certbroker get --addr {addr} --spc 1234 --out ./out\n  \
           grpcurl -plaintext -d '{{\"tn_auth_list\":[{{\"spc\":\"1234\"}}]}}' {addr} certbroker.v1.CertificateBrokerService/GetCertificate\n",
        dir = ca.directory_url(),
        pa = ca.sti_pa_url(),
        root = ca.trust_root_path().display(),
    );
}
