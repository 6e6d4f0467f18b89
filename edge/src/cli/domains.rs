//! `gitdeploy domains add|ls|rm`: a project's custom domains, through the API.

use serde_json::json;

use super::output::{print_json, str_of, table};
use super::{Client, EXIT_OK};

/// `gitdeploy domains …`
#[derive(clap::Subcommand, Debug)]
pub enum DomainAction {
    /// Add a custom domain to a project (it serves once its DNS points at the platform).
    Add {
        /// Project name.
        project: String,
        /// Domain name (`www.example.com`).
        domain: String,
    },
    /// List a project's custom domains and their status.
    Ls {
        /// Project name.
        project: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a custom domain from a project.
    Rm {
        /// Project name.
        project: String,
        /// Domain name.
        domain: String,
    },
}

pub(super) async fn domains(client: &Client, action: DomainAction) -> Result<i32, String> {
    match action {
        DomainAction::Add { project, domain } => {
            let d = client
                .post(
                    &format!("/api/projects/{project}/domains"),
                    json!({"domain": domain}),
                )
                .await?;
            let p = client.get(&format!("/api/projects/{project}")).await?;
            let target = str_of(&p, "url")
                .split("://")
                .nth(1)
                .unwrap_or("")
                .split(['/', ':'])
                .next()
                .unwrap_or("")
                .to_owned();
            println!(
                "Added {} to {project} ({}). Point it at the platform: a CNAME record to {target}, \
                 or A/AAAA records to the platform's public addresses.",
                str_of(&d, "domain"),
                str_of(&d, "status")
            );
            Ok(EXIT_OK)
        }
        DomainAction::Ls { project, json } => {
            let list = client
                .get(&format!("/api/projects/{project}/domains"))
                .await?;
            if json {
                return Ok(print_json(&list));
            }
            let rows = list
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    vec![
                        str_of(d, "domain").to_owned(),
                        str_of(d, "status").to_owned(),
                        d["not_after_unix_ms"]
                            .as_u64()
                            .map(|t| format!("{} days", expiry_days(t)))
                            .unwrap_or_else(|| "-".into()),
                        d["error"].as_str().unwrap_or("").to_owned(),
                    ]
                })
                .collect();
            println!("{}", table(&["DOMAIN", "STATUS", "EXPIRES", "ERROR"], rows));
            Ok(EXIT_OK)
        }
        DomainAction::Rm { project, domain } => {
            client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/projects/{project}/domains/{domain}"),
                    None,
                )
                .await?;
            println!("Removed {domain} from {project}");
            Ok(EXIT_OK)
        }
    }
}

/// Whole days from now until `unix_ms` (negative once past).
fn expiry_days(unix_ms: u64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (unix_ms as i64 - now) / 86_400_000
}
