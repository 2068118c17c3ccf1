//! `proxmox-sim`: runs the Proxmox VE API simulator (`drivers::proxmox::sim`)
//! on a loopback port until Ctrl-C, for `hazel demo` and manual testing.
//! Without flags it serves a small demo cluster; `--scenario` loads a full
//! `SimConfig` (YAML or JSON) and the other flags override parts of it.

use std::process::ExitCode;
use std::time::Duration;

use drivers::proxmox::sim::{generated_guests, ProxmoxSim, SimConfig};

const USAGE: &str = "\
proxmox-sim: a Proxmox VE API simulator (plain HTTP, /api2/json)

USAGE:
    proxmox-sim [OPTIONS]

OPTIONS:
    --listen ADDR          address to listen on [default: 127.0.0.1:8006]
    --nodes N|a,b,c        node count (pve1..pveN) or node names [default: demo cluster]
    --vms N                generate N running VMs (vmid 100..) across the nodes
    --token ID=SECRET      accepted API token [default: root@pam!hazel=<demo secret>]
    --task-delay-ms MS     how long power tasks run [default: 50]
    --latency-ms MS        delay added to every answer [default: 0]
    --auth-delay-ms MS     delay of 401 answers (a real server: 3000) [default: 20]
    --scenario FILE        YAML or JSON SimConfig (nodes, guests, locks, HA, failures)
    -h, --help             this text

The demo cluster has nodes pve1 and pve2, VMs 100 101 104 105 (tier.high /
tier.low), 106 (locked by a backup), 107 (every task fails), 108 (HA-managed,
restarted by the cluster), containers 201 202 and template 9000.
The default token secret is printed by --help only:
    root@pam!hazel=5f0c6a1e-8d4b-4c2a-9e1f-0a1b2c3d4e5f
";

/// Command-line options, each overriding the scenario.
#[derive(Debug, Default)]
struct Options {
    listen: Option<String>,
    nodes: Option<String>,
    vms: Option<usize>,
    token: Option<String>,
    task_delay_ms: Option<u64>,
    latency_ms: Option<u64>,
    auth_delay_ms: Option<u64>,
    scenario: Option<String>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut opts = Options::default();
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name} needs a number, got {v:?}"))
        };
        match name.as_str() {
            "--listen" => opts.listen = Some(value()?),
            "--nodes" => opts.nodes = Some(value()?),
            "--vms" => opts.vms = Some(number(value()?)? as usize),
            "--token" => opts.token = Some(value()?),
            "--task-delay-ms" => opts.task_delay_ms = Some(number(value()?)?),
            "--latency-ms" => opts.latency_ms = Some(number(value()?)?),
            "--auth-delay-ms" => opts.auth_delay_ms = Some(number(value()?)?),
            "--scenario" => opts.scenario = Some(value()?),
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    Ok(Some(opts))
}

fn build_config(opts: &Options) -> Result<SimConfig, String> {
    let mut cfg = match &opts.scenario {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            if path.ends_with(".json") {
                serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?
            } else {
                serde_norway::from_str(&text).map_err(|e| format!("{path}: {e}"))?
            }
        }
        None if opts.vms.is_some() || opts.nodes.is_some() => SimConfig::default(),
        None => SimConfig::demo(),
    };
    if opts.scenario.is_none() {
        cfg.listen = "127.0.0.1:8006".parse().expect("a valid literal address");
    }
    if let Some(nodes) = &opts.nodes {
        cfg.nodes = match nodes.parse::<usize>() {
            Ok(n) => (1..=n.max(1)).map(|i| format!("pve{i}")).collect(),
            Err(_) => nodes
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
        };
    }
    if let Some(vms) = opts.vms {
        cfg.guests = generated_guests(&cfg.nodes, vms);
    }
    if let Some(listen) = &opts.listen {
        cfg.listen = listen
            .parse()
            .map_err(|e| format!("--listen {listen:?}: {e}"))?;
    }
    if let Some(token) = &opts.token {
        let (id, secret) = token
            .split_once('=')
            .ok_or("--token must be USER@REALM!NAME=SECRET")?;
        cfg.token_id = id.to_string();
        cfg.token_secret = secret.to_string();
    }
    if let Some(ms) = opts.task_delay_ms {
        cfg.task_delay_ms = ms;
    }
    if let Some(ms) = opts.latency_ms {
        cfg.latency_ms = ms;
    }
    if let Some(ms) = opts.auth_delay_ms {
        cfg.auth_fail_delay_ms = ms;
    }
    Ok(cfg)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("proxmox-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match build_config(&opts) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("proxmox-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let (nodes, guests, token_id) = (cfg.nodes.len(), cfg.guests.len(), cfg.token_id.clone());
    let sim = match ProxmoxSim::start(cfg).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("proxmox-sim: cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "proxmox-sim listening on {} ({nodes} nodes, {guests} guests, token {token_id})",
        sim.base_url()
    );
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling available: serve until killed.
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    println!(
        "proxmox-sim: {} requests served, stopping",
        sim.total_requests()
    );
    sim.shutdown().await;
    ExitCode::SUCCESS
}
