//! `gitdeploy tokens create|ls|revoke` and `gitdeploy audit`: named API tokens and the audit
//! log, through the API.

use serde_json::{json, Value};

use super::output::{age, print_json, str_of, table};
use super::{Client, EXIT_OK};

/// `gitdeploy tokens …`
#[derive(clap::Subcommand, Debug)]
pub enum TokenAction {
    /// Make a named token; its secret is printed once (on standard output, alone).
    Create {
        /// A name for people ("ci", "alice's laptop").
        name: String,
        /// What it may do: read, deploy or admin (repeatable; deploy includes read, admin
        /// everything).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// The one project it may reach.
        #[arg(long)]
        project: Option<String>,
    },
    /// List named tokens (never their secrets).
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// Its id (`tok_…`).
        id: String,
    },
}

pub(super) async fn tokens(client: &Client, action: TokenAction) -> Result<i32, String> {
    match action {
        TokenAction::Create {
            name,
            scopes,
            project,
        } => {
            let t = client
                .post(
                    "/api/tokens",
                    json!({"name": name, "scopes": scopes, "project": project}),
                )
                .await?;
            eprintln!(
                "Created token {} ({}), scopes [{}]{}. Its secret is shown this once:",
                str_of(&t, "name"),
                str_of(&t, "id"),
                scope_list(&t),
                t["project"]
                    .as_str()
                    .map(|p| format!(", project {p} only"))
                    .unwrap_or_default()
            );
            println!("{}", str_of(&t, "token"));
            Ok(EXIT_OK)
        }
        TokenAction::Ls { json } => {
            let list = client.get("/api/tokens").await?;
            if json {
                return Ok(print_json(&list["tokens"]));
            }
            let rows = list["tokens"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    vec![
                        str_of(t, "id").to_owned(),
                        str_of(t, "name").to_owned(),
                        scope_list(t),
                        t["project"].as_str().unwrap_or("(all)").to_owned(),
                        age(t["created_unix_ms"].as_u64().unwrap_or(0)),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(&["ID", "NAME", "SCOPES", "PROJECT", "CREATED"], rows)
            );
            Ok(EXIT_OK)
        }
        TokenAction::Revoke { id } => {
            client
                .call(reqwest::Method::DELETE, &format!("/api/tokens/{id}"), None)
                .await?;
            println!("Revoked {id}");
            Ok(EXIT_OK)
        }
    }
}

/// `gitdeploy audit`: the newest API mutations.
pub(super) async fn audit(client: &Client, limit: usize, json: bool) -> Result<i32, String> {
    let list = client.get(&format!("/api/audit?limit={limit}")).await?;
    if json {
        return Ok(print_json(&list["entries"]));
    }
    let rows = list["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            vec![
                age(e["time_unix_ms"].as_u64().unwrap_or(0)),
                str_of(e, "actor").to_owned(),
                format!("{} {}", str_of(e, "method"), str_of(e, "path")),
                e["status"].to_string(),
            ]
        })
        .collect();
    println!("{}", table(&["WHEN", "WHO", "WHAT", "STATUS"], rows));
    Ok(EXIT_OK)
}

fn scope_list(t: &Value) -> String {
    t["scopes"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
