//! The admin's and the auditor's commands against a pool (tenants, quotas, limits,
//! policies, users, nodes, the audit ledger, root keys) and `berth login`: each one
//! call of the typed API client, its answer printed for people or as JSON.

use berth_api::audit::{DecisionExplained, Entry, Filter, Reach, Revoke, RootKeyInfo};
use berth_api::client::Client;
use berth_api::nodes::{NewJoinToken, NodeInfo};
use berth_api::quota::{NewTenant, PolicyBody};
use berth_api::users::NewUser;
use serde::Serialize;

use crate::args::{
    AuditCommand, Cli, Command, LimitsCommand, NodeCommand, PolicyCommand, QuotaCommand,
    RootKeyCommand, TenantCommand, UserCommand,
};
use crate::commands::print_json;
use crate::failure::{Exit, Failure};
use crate::remote;

/// The admin subcommands: each is one call of the REST API.
pub(crate) async fn admin(cli: &Cli) -> Result<(), Failure> {
    let remote = cli.remote()?.ok_or_else(|| Failure {
        exit: Exit::Invalid,
        message: "admin commands need --endpoint (or BERTH_ENDPOINT) and an admin token".into(),
    })?;
    let api = remote.client();
    match &cli.command {
        Command::Tenant(command) => tenant(api, command).await,
        Command::Quota(command) => quota(api, command).await,
        Command::Limits(command) => limits(api, command).await,
        Command::Policy(command) => policy(api, command).await,
        Command::User(UserCommand::Create { tenant, name, role }) => {
            let role = berth_api::Role::parse(role).ok_or_else(|| Failure {
                exit: Exit::Invalid,
                message: format!("unknown role {role:?}: use admin, developer or auditor"),
            })?;
            let user = NewUser {
                name: name.clone(),
                password: read_password()?,
                role,
            };
            print_json(&api.create_user(tenant, &user).await?);
            Ok(())
        }
        Command::Node(command) => node(cli, api, command).await,
        Command::Audit(command) => audit(cli, api, command).await,
        Command::RootKey(command) => root_key(cli, api, command).await,
        _ => Err(Failure {
            exit: Exit::Failure,
            message: "not an admin command".into(),
        }),
    }
}

async fn tenant(api: &Client, command: &TenantCommand) -> Result<(), Failure> {
    let TenantCommand::Create { name, quota } = command;
    let asked = NewTenant {
        name: name.clone(),
        quota: Some(quota.to_limit()?),
    };
    print_json(&api.create_tenant(&asked).await?);
    Ok(())
}

async fn quota(api: &Client, command: &QuotaCommand) -> Result<(), Failure> {
    let answer = match command {
        QuotaCommand::Set { tenant, quota } => api.set_quota(tenant, &quota.to_limit()?).await?,
        QuotaCommand::Show { tenant } => api.quota(tenant).await?,
    };
    print_json(&answer);
    Ok(())
}

async fn limits(api: &Client, command: &LimitsCommand) -> Result<(), Failure> {
    let answer = match command {
        LimitsCommand::Set {
            tenant,
            requests_per_second,
            deploys_per_minute,
            attenuations_per_hour,
            services_per_topology,
            replicas_per_service,
            image_mebibytes,
        } => {
            let limits = berth_api::TenantLimits {
                requests_per_second: *requests_per_second,
                deploys_per_minute: *deploys_per_minute,
                attenuations_per_hour: *attenuations_per_hour,
                services_per_topology: *services_per_topology,
                replicas_per_service: *replicas_per_service,
                image_mebibytes: *image_mebibytes,
            };
            api.set_limits(tenant, &limits).await?
        }
        LimitsCommand::Show { tenant } => api.limits(tenant).await?,
    };
    print_json(&answer);
    Ok(())
}

async fn policy(api: &Client, command: &PolicyCommand) -> Result<(), Failure> {
    let answer = match command {
        PolicyCommand::Set { tenant, allow } => {
            let asked = PolicyBody {
                allow: allow.clone(),
            };
            api.set_policy(tenant, &asked).await?
        }
        PolicyCommand::Show { tenant } => api.policy(tenant).await?,
    };
    print_json(&answer);
    Ok(())
}

async fn node(cli: &Cli, api: &Client, command: &NodeCommand) -> Result<(), Failure> {
    match command {
        NodeCommand::JoinToken { ttl } => {
            let token = api
                .join_token(&NewJoinToken {
                    ttl_seconds: Some(*ttl),
                })
                .await?;
            show(cli, &token, |t| println!("{}", t.join_command));
        }
        NodeCommand::List => show(cli, &api.nodes().await?, |nodes| print_nodes(nodes)),
        NodeCommand::Cordon { name } => print_json(&api.cordon(name).await?),
        NodeCommand::Uncordon { name } => print_json(&api.uncordon(name).await?),
        NodeCommand::Drain { name } => print_json(&api.drain(name).await?),
    }
    Ok(())
}

async fn audit(cli: &Cli, api: &Client, command: &AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::List {
            kind,
            of_tenant,
            subject,
            limit,
        } => {
            let filter = Filter {
                kind: kind.clone(),
                tenant: of_tenant.clone(),
                subject: subject.clone(),
                limit: Some(*limit),
            };
            show(cli, &api.audit_entries(&filter).await?, |entries| {
                for e in entries {
                    println!(
                        "{:>6}  {:<10} {:<10} {:<24} {}",
                        e.seq, e.kind, e.tenant, e.actor, e.subject
                    );
                }
            });
        }
        AuditCommand::Verify { anchor } => {
            let asked = berth_api::audit::VerifyQuery {
                tenant: None,
                anchor: anchor.as_ref().map(ToString::to_string),
            };
            let verified = api.verify(&asked).await?;
            if cli.json {
                print_json(&verified);
            } else if verified.intact {
                println!(
                    "the ledger is intact: {} entries, head {}",
                    verified.entries, verified.head
                );
                if let Some(anchor) = anchor {
                    println!("entry {} is the one anchored", anchor.seq);
                }
                if let Some(w) = &verified.witnessed {
                    println!("it holds the server witness's last anchor: {}", w.anchor);
                }
                if !verified.anchor.is_empty() {
                    println!(
                        "anchor (keep it outside the database, then `berth audit verify --anchor {kept}`): {kept}",
                        kept = verified.anchor
                    );
                }
            }
            if !verified.intact {
                let against = match &verified.witnessed {
                    Some(w) if anchor.is_none() => format!(
                        " (checked against the server witness's last anchor {})",
                        w.anchor
                    ),
                    _ => String::new(),
                };
                return Err(Failure {
                    exit: Exit::Failure,
                    message: format!(
                        "the ledger is broken: {}{against}",
                        verified.problem.as_deref().unwrap_or("unknown problem")
                    ),
                });
            }
        }
        AuditCommand::Explain { id } => match id.parse::<u64>() {
            Ok(seq) if id.bytes().all(|b| b.is_ascii_digit()) => {
                show(cli, &api.decision(seq).await?, print_decision);
            }
            _ => show(cli, &api.explain_token(id).await?, |explained| {
                let minted = &explained.minted;
                println!(
                    "token {id}\n  tenant   {}\n  minted   entry {} at {} (Unix ms)\n  revoked  {}",
                    minted.tenant, minted.seq, minted.at_ms, explained.revoked
                );
                println!("{}", minted.detail);
                for e in &explained.history {
                    println!("-- entry {} {} by {}\n{}", e.seq, e.kind, e.actor, e.detail);
                }
            }),
        },
        AuditCommand::Graph { of_tenant, format } => {
            let reach = api.graph(of_tenant.as_deref()).await?;
            match format.as_str() {
                "json" => print_json(&reach),
                "dot" => print!("{}", reach.to_dot()),
                "text" => show(cli, &reach, print_reach),
                other => {
                    return Err(Failure {
                        exit: Exit::Invalid,
                        message: format!("--format must be text, json or dot, not {other:?}"),
                    });
                }
            }
        }
        AuditCommand::Revoke {
            ids,
            node,
            of_tenant,
            reason,
        } => {
            let asked = Revoke {
                ids: ids.clone(),
                node: node.clone(),
                tenant: of_tenant.clone(),
                reason: reason.clone(),
            };
            show(cli, &api.revoke(&asked).await?, |entry: &Entry| {
                println!(
                    "revoked {} id(s); ledger entry {}",
                    entry.revocation_ids.len(),
                    entry.seq
                );
            });
        }
    }
    Ok(())
}

async fn root_key(cli: &Cli, api: &Client, command: &RootKeyCommand) -> Result<(), Failure> {
    match command {
        RootKeyCommand::List => show(cli, &api.root_keys().await?, |keys| {
            for key in keys {
                println!(
                    "{:>4}  {}{}",
                    key.id,
                    key.public_key,
                    if key.signing { "  (signing)" } else { "" }
                );
            }
        }),
        RootKeyCommand::Rotate => show(cli, &api.rotate_root_key().await?, |key: &RootKeyInfo| {
            println!(
                "root key {} signs every new token from now on: {}",
                key.id, key.public_key
            );
        }),
        RootKeyCommand::Retire { id, force } => {
            print_json(&api.retire_root_key(*id, *force).await?);
        }
    }
    Ok(())
}

/// `value` as JSON with `--json`, else as `people` print it.
fn show<T: Serialize>(cli: &Cli, value: &T, people: impl FnOnce(&T)) {
    if cli.json {
        print_json(value);
    } else {
        people(value);
    }
}

fn print_nodes(nodes: &[NodeInfo]) {
    println!(
        "{:<24} {:<9} {:>11} {:>13} {:>11}  {:<9} LABELS",
        "NODE", "STATE", "CONTAINERS", "CPU (millis)", "MEMORY (MiB)", "FIREWALL"
    );
    let of = |used: u64, cap: Option<u64>, scale: u64| match cap {
        Some(cap) => format!("{}/{}", used / scale, cap / scale),
        None => format!("{}/-", used / scale),
    };
    for n in nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let firewall = match n.firewall.as_str() {
            "" => "-",
            said => said,
        };
        println!(
            "{:<24} {:<9} {:>11} {:>13} {:>11}  {:<9} {}",
            n.name,
            n.state.as_str(),
            of(n.used.containers, n.capacity.containers, 1),
            of(n.used.cpu_millis, n.capacity.cpu_millis, 1),
            of(n.used.memory_bytes, n.capacity.memory_bytes, 1 << 20),
            firewall,
            labels.join(",")
        );
    }
}

fn print_reach(reach: &Reach) {
    if reach.edges.is_empty() {
        println!("no delegation is in force");
    }
    for e in &reach.edges {
        println!(
            "{} -> {} {}/{}/{}:{} on {}  (token {})",
            e.caller, e.operation, e.tenant, e.topology, e.service, e.port, e.target, e.token
        );
    }
}

/// A decision explained, for people.
fn print_decision(explained: &DecisionExplained) {
    let decision = &explained.decision;
    let verdict = if explained.allowed {
        "allowed"
    } else {
        "refused"
    };
    println!(
        "decision {}: {verdict} by node {} at {} (Unix ms)\n  call     {}\n  reason   {}",
        decision.seq, decision.actor, decision.at_ms, decision.subject, explained.reason,
    );
    match &explained.token {
        Some(token) => {
            let minted = &token.minted;
            println!(
                "  token    {} ({} at entry {}, revoked {})",
                minted.subject, minted.kind, minted.seq, token.revoked
            );
            for line in minted.detail.lines() {
                println!("    {line}");
            }
        }
        None => println!("  token    never minted by Berth (garbage, or signed by another root)"),
    }
    for id in &explained.unknown_blocks {
        println!("  block    {id} was appended by the holder and never shown to Berth");
    }
}

/// The password, from `BERTH_PASSWORD` or the first line of standard input.
fn read_password() -> Result<String, Failure> {
    match std::env::var("BERTH_PASSWORD") {
        Ok(p) => Ok(p),
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| Failure {
                exit: Exit::Failure,
                message: format!("cannot read the password: {e}"),
            })?;
            Ok(line.trim_end_matches(['\n', '\r']).to_owned())
        }
    }
}

/// `berth login USER`: a session token for the tenant, printed for the shell.
pub(crate) async fn login(cli: &Cli, user: &str) -> Result<(), Failure> {
    let endpoint = cli.endpoint.as_deref().ok_or_else(|| Failure {
        exit: Exit::Invalid,
        message: "login needs --endpoint (or BERTH_ENDPOINT)".into(),
    })?;
    let password = read_password()?;
    let session = remote::login(endpoint, cli.ca.as_deref(), &cli.tenant, user, &password).await?;
    if cli.json {
        print_json(&session);
    } else {
        eprintln!(
            "logged in to tenant {:?} as {user:?} ({:?}); the token expires at {} (Unix time)",
            cli.tenant, session.role, session.expires_at
        );
        println!("{}", session.token);
    }
    Ok(())
}
