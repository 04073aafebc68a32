//! `--config FILE`: every `serve` option in a TOML file, under the same
//! names as the flags (`listen = "0.0.0.0:443"`, `call-timeout-ms = 10000`,
//! `trusted-proxy = ["10.0.0.0/8"]`). Precedence: built-in defaults <
//! the file < `FERROLINK_*` environment variables < flags. The file's
//! values become the options' defaults, so clap applies the rest of the
//! order and parses and validates every value as it would a flag's.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::builder::OsStr;
use clap::{ArgAction, Command};

/// The options a file may set: `serve`'s, plus the global `data` and
/// `database`.
fn settable(cmd: &Command) -> Vec<(String, clap::Arg, bool)> {
    let serve = cmd
        .find_subcommand("serve")
        .expect("the serve subcommand exists");
    let global = cmd
        .get_arguments()
        .filter(|a| matches!(a.get_id().as_str(), "data" | "database"));
    let mut out = Vec::new();
    for (arg, is_serve) in global
        .map(|a| (a, false))
        .chain(serve.get_arguments().map(|a| (a, true)))
    {
        if let Some(long) = arg.get_long()
            && !matches!(long, "help" | "version" | "config")
        {
            out.push((long.to_owned(), arg.clone(), is_serve));
        }
    }
    out
}

/// The file named by `--config FILE` / `--config=FILE` in `args`, or by
/// `FERROLINK_CONFIG`. Read before clap parses, because the file changes
/// what clap's defaults are.
pub(crate) fn path_from(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("FERROLINK_CONFIG").map(PathBuf::from)
}

/// A TOML value as the string a flag would carry.
fn flag_value(file: &Path, key: &str, v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!(
            "{}: `{key}` must be a string, number or boolean, not {}",
            file.display(),
            other.type_str()
        ),
    })
}

/// Reads `file` and makes its values the defaults of `cmd`'s options.
/// Unknown keys and values of the wrong shape are refused with the file
/// and the key named.
pub(crate) fn apply(cmd: Command, file: &Path) -> Result<Command> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the config file {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", file.display()))?;
    let known = settable(&cmd);
    let mut cmd = cmd;
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let Some((_, arg, is_serve)) = known.iter().find(|(long, _, _)| *long == name) else {
            let mut names: Vec<&str> = known.iter().map(|(l, _, _)| l.as_str()).collect();
            names.sort_unstable();
            bail!(
                "{}: unknown setting `{key}`; the settings are the options of `ferrolink serve` (see `ferrolink config default`): {}",
                file.display(),
                names.join(", ")
            );
        };
        let id = arg.get_id().clone();
        let values: Vec<String> = match (value, arg.get_action()) {
            (toml::Value::Array(items), ArgAction::Append) => items
                .iter()
                .map(|v| flag_value(file, key, v))
                .collect::<Result<_>>()?,
            (_, ArgAction::Append) => vec![flag_value(file, key, value)?],
            (toml::Value::Boolean(_), ArgAction::SetTrue) => vec![flag_value(file, key, value)?],
            (_, ArgAction::SetTrue) => bail!(
                "{}: `{key}` is a switch: write `{key} = true` or `{key} = false`",
                file.display()
            ),
            (toml::Value::Array(_), _) => {
                bail!("{}: `{key}` takes one value, not a list", file.display())
            }
            _ => vec![flag_value(file, key, value)?],
        };
        let values: Vec<OsStr> = values.into_iter().map(OsStr::from).collect();
        let set = move |a: clap::Arg| a.default_values(values.clone());
        cmd = if *is_serve {
            cmd.mut_subcommand("serve", |s| s.mut_arg(id, set))
        } else {
            cmd.mut_arg(id, set)
        };
    }
    Ok(cmd)
}

/// A value as TOML text.
fn toml_text(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

/// The commented default file: every setting with its help and default.
pub(crate) fn default_file(cmd: &Command) -> String {
    let mut out = String::from(
        "# ferrolink configuration (ferrolink --config FILE serve).\n\
         # Every setting is an option of `ferrolink serve`, under its flag's name.\n\
         # Precedence: these defaults < this file < FERROLINK_* environment < flags.\n\
         # Uncomment what you change.\n",
    );
    for (long, arg, _) in settable(cmd) {
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in help.lines() {
            out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (environment: {})\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let line = match arg.get_action() {
            ArgAction::SetTrue => format!("{long} = false"),
            ArgAction::Append => format!(
                "{long} = [{}]",
                defaults
                    .iter()
                    .map(|d| toml_text(d))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => match defaults.first() {
                Some(d) => format!("{long} = {}", toml_text(d)),
                None => format!("{long} = \"\""),
            },
        };
        out.push_str(&format!("# {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_flag_is_found_before_parsing() {
        let args = |v: &[&str]| {
            v.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert_eq!(
            path_from(&args(&["ferrolink", "--config", "a.toml", "serve"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            path_from(&args(&["ferrolink", "serve", "--config=b.toml"])),
            Some(PathBuf::from("b.toml"))
        );
    }
}
