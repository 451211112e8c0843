//! `sbx token …` and `sbx audit`: the policy subcommands.

use super::{CliError, ConnArgs};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use sbx_api::{AuditQuery, CreateTokenRequest, Scope};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token and print its secret (shown only this once)
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        /// The identity the audit trail records for the token's calls
        #[arg(long)]
        name: String,
        /// sandboxes:create, sandboxes:read, sandboxes:delete,
        /// sandboxes:exec, sandboxes:network, sandboxes:lifecycle,
        /// tokens:admin, audit:read, metrics:read, images:read or
        /// images:write; repeatable
        #[arg(long = "scope", required = true)]
        scopes: Vec<Scope>,
        /// Lifetime in seconds (default: no expiry)
        #[arg(long)]
        ttl: Option<u64>,
        /// Limit the token to this sandbox (it dies with it)
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// List tokens (never their secrets)
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Revoke tokens by id
    Revoke {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Arguments of `sbx audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Only calls about this sandbox
    id: Option<String>,
    /// Only records since this time: RFC 3339, or an age like 90s, 10m,
    /// 2h, 1d
    #[arg(long, value_parser = parse_since)]
    since: Option<DateTime<Utc>>,
    /// At most this many records, the newest (1 to 1000; default 100)
    #[arg(long)]
    limit: Option<u32>,
}

/// An RFC 3339 time, or an age (`10m`) counted back from now.
fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let invalid = || format!("{text:?} is neither an RFC 3339 time nor an age like 10m");
    let split = text.len().checked_sub(1).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => return Err(invalid()),
    };
    let age = chrono::Duration::try_seconds(seconds).ok_or_else(invalid)?;
    Utc::now().checked_sub_signed(age).ok_or_else(invalid)
}

fn time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub async fn token(command: TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::Create {
            conn,
            name,
            scopes,
            ttl,
            sandbox,
        } => {
            let request = CreateTokenRequest {
                name,
                scopes,
                ttl_s: ttl,
                sandbox,
            };
            let created = conn.client()?.create_token(&request).await?;
            eprintln!(
                "token {} ({}) created; its secret is shown only once:",
                created.token.id, created.token.name
            );
            println!("{}", created.secret);
        }
        TokenCommand::Ls { conn } => {
            let tokens = conn.client()?.list_tokens().await?;
            println!(
                "{:<16}  {:<24} {:<24} {:<24} {:<16} SCOPES",
                "ID", "NAME", "EXPIRES", "CREATED_BY", "SANDBOX"
            );
            for token in tokens {
                let scopes: Vec<&str> = token.scopes.iter().map(|scope| scope.as_str()).collect();
                println!(
                    "{:<16}  {:<24} {:<24} {:<24} {:<16} {}",
                    token.id,
                    token.name,
                    token.expires_at.as_ref().map_or("never".into(), time),
                    token.created_by,
                    token.sandbox.as_deref().unwrap_or("-"),
                    scopes.join(",")
                );
            }
        }
        TokenCommand::Revoke { conn, ids } => {
            let client = conn.client()?;
            for id in ids {
                client.revoke_token(&id).await?;
                println!("{id}");
            }
        }
    }
    Ok(())
}

/// Prints the records as a table, oldest first (the API sends the newest
/// first; a terminal reads best with the latest at the bottom).
pub async fn audit(args: AuditArgs) -> Result<(), CliError> {
    let query = AuditQuery {
        sandbox: args.id,
        since: args.since,
        limit: args.limit,
    };
    let records = args.conn.client()?.audit(&query).await?;
    println!(
        "{:<24} {:<24} {:<6} {:<6} {:<42} {:<16} {:<16} {:>8}  SUMMARY",
        "TIME", "IDENTITY", "STATUS", "METHOD", "ROUTE", "SANDBOX", "REQUEST", "MS"
    );
    for record in records.iter().rev() {
        println!(
            "{:<24} {:<24} {:<6} {:<6} {:<42} {:<16} {:<16} {:>8.3}  {}",
            time(&record.time),
            record.identity,
            record.status,
            record.method,
            record.route,
            record.sandbox.as_deref().unwrap_or("-"),
            record.request_id.as_deref().unwrap_or("-"),
            record.duration_us as f64 / 1000.0,
            record.summary.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let exact = parse_since("2026-01-02T03:04:05Z").expect("rfc 3339");
        assert_eq!(time(&exact), "2026-01-02T03:04:05.000Z");
        let ten_minutes = parse_since("10m").expect("an age");
        let age = Utc::now() - ten_minutes;
        assert!((599..=601).contains(&age.num_seconds()), "{age}");
        assert!(parse_since("2d").is_ok());
        for bad in ["", "m", "10", "10y", "yesterday", "-"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }
}
