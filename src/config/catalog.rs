//! The built-in provider catalog (SPEC §3). `[[providers]]` in the config add to
//! it, or replace an entry of the same name.

use super::schema::{BasicConfig, InjectConfig, ProviderConfig};

fn header(name: &str, value: &str) -> InjectConfig {
    InjectConfig::Header {
        header: name.to_string(),
        value: value.to_string(),
    }
}

fn entry(
    name: &str,
    hosts: &[&str],
    secret: &str,
    inject: InjectConfig,
    env: &[&str],
) -> ProviderConfig {
    ProviderConfig {
        name: name.to_string(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        secret: secret.to_string(),
        inject: Some(inject),
        sign: None,
        env: env.iter().map(|e| e.to_string()).collect(),
    }
}

/// The providers keyward knows without any configuration.
pub fn builtin() -> Vec<ProviderConfig> {
    let bearer = || header("authorization", "Bearer {secret}");
    vec![
        entry(
            "openai",
            &["api.openai.com"],
            "OPENAI_API_KEY",
            bearer(),
            &["OPENAI_API_KEY"],
        ),
        entry(
            "anthropic",
            &["api.anthropic.com"],
            "ANTHROPIC_API_KEY",
            header("x-api-key", "{secret}"),
            &["ANTHROPIC_API_KEY"],
        ),
        entry(
            "gemini",
            &["generativelanguage.googleapis.com"],
            "GEMINI_API_KEY",
            header("x-goog-api-key", "{secret}"),
            &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        ),
        entry(
            "azure-openai",
            &["*.openai.azure.com"],
            "AZURE_OPENAI_API_KEY",
            header("api-key", "{secret}"),
            &["AZURE_OPENAI_API_KEY"],
        ),
        entry(
            "xai",
            &["api.x.ai"],
            "XAI_API_KEY",
            bearer(),
            &["XAI_API_KEY"],
        ),
        entry(
            "mistral",
            &["api.mistral.ai"],
            "MISTRAL_API_KEY",
            bearer(),
            &["MISTRAL_API_KEY"],
        ),
        entry(
            "groq",
            &["api.groq.com"],
            "GROQ_API_KEY",
            bearer(),
            &["GROQ_API_KEY"],
        ),
        entry(
            "openrouter",
            &["openrouter.ai"],
            "OPENROUTER_API_KEY",
            bearer(),
            &["OPENROUTER_API_KEY"],
        ),
        entry(
            "github",
            &["api.github.com", "uploads.github.com"],
            "GITHUB_TOKEN",
            bearer(),
            &["GITHUB_TOKEN", "GH_TOKEN"],
        ),
        // git over HTTPS speaks Basic auth; GitHub accepts a token as the password.
        entry(
            "github-git",
            &["github.com"],
            "GITHUB_TOKEN",
            InjectConfig::Basic {
                basic: BasicConfig {
                    user: "x-access-token".into(),
                    password: "{secret}".into(),
                },
            },
            &[],
        ),
        entry(
            "slack",
            &["slack.com"],
            "SLACK_BOT_TOKEN",
            bearer(),
            &["SLACK_BOT_TOKEN"],
        ),
        entry(
            "discord",
            &["discord.com"],
            "DISCORD_BOT_TOKEN",
            header("authorization", "Bot {secret}"),
            &["DISCORD_BOT_TOKEN"],
        ),
        entry(
            "telegram",
            &["api.telegram.org"],
            "TELEGRAM_BOT_TOKEN",
            InjectConfig::PathPrefix {
                path_prefix: "/bot{secret}".into(),
            },
            &["TELEGRAM_BOT_TOKEN"],
        ),
        entry(
            "sendgrid",
            &["api.sendgrid.com"],
            "SENDGRID_API_KEY",
            bearer(),
            &["SENDGRID_API_KEY"],
        ),
        entry(
            "stripe",
            &["api.stripe.com"],
            "STRIPE_API_KEY",
            InjectConfig::Basic {
                basic: BasicConfig {
                    user: "{secret}".into(),
                    password: String::new(),
                },
            },
            &["STRIPE_API_KEY"],
        ),
    ]
}

/// The catalog with `extra` merged in: same name replaces, new names append.
pub fn merged(extra: &[ProviderConfig]) -> Vec<ProviderConfig> {
    let mut all = builtin();
    for p in extra {
        match all.iter_mut().find(|b| b.name == p.name) {
            Some(slot) => *slot = p.clone(),
            None => all.push(p.clone()),
        }
    }
    all
}
