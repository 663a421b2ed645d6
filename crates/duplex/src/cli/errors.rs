//! How a failure reaches the person at the terminal: each cause said once,
//! and a bad `DUPLEX_*` value blamed on the variable, not on a flag that
//! was never typed.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The error and its causes, joined with ": ", leaving out a cause whose
/// text the message already holds (`std::io::Error` and many wrappers print
/// their source in their own text, so `{:#}` would say it twice).
pub(super) fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// clap reports a bad value from the environment as if the flag had been
/// given ("invalid value 'lots' for '--max-connections <MAX_CONNECTIONS>'").
/// When the flag is not on the command line but its variable is set, the
/// error names the variable instead.
pub(super) fn blame_environment(
    e: clap::Error,
    command: &clap::Command,
    args: &[OsString],
) -> clap::Error {
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return e;
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let Some(long) = shown
        .strip_prefix("--")
        .and_then(|s| s.split([' ', '=']).next())
    else {
        return e;
    };
    let flag = format!("--{long}");
    let typed = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    });
    if typed {
        return e;
    }
    let Some(var) = env_of(command, long) else {
        return e;
    };
    let Some(value) = std::env::var_os(&var) else {
        return e;
    };
    let why = match (
        std::error::Error::source(&e),
        e.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("possible values: {}", valid.join(", "))
        }
        _ => "not a valid value".to_string(),
    };
    clap::Error::raw(
        e.kind(),
        format!(
            "invalid value {:?} in the environment variable {var} (the value of {flag}): {why}\n",
            value.to_string_lossy()
        ),
    )
}

/// The environment variable of the flag `--<long>`, in any subcommand.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|sub| env_of(sub, long)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone (os error 2)");
        let wrapped = anyhow::Error::new(io).context("cannot read x: gone (os error 2)");
        assert_eq!(report(&wrapped), "cannot read x: gone (os error 2)");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let wrapped = anyhow::Error::new(io).context("cannot read x");
        assert_eq!(report(&wrapped), "cannot read x: gone");
    }
}
