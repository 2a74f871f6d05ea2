//! `mesh-oauth`: the filter's core on the command line.
//!
//!     mesh-oauth check-config FILE
//!     mesh-oauth convert FILE... [--check] [--report] [--minimal] [--root-namespace NS] [--url URL]
//!     mesh-oauth explain --config FILE [--token TOKEN|-] [--jwks FILE|URL] [--method M]
//!                        [--path P] [--host H] [--now T] [--header NAME|--param NAME|--cookie NAME]
//!                        [--request-header 'NAME: VALUE']... [--peer URI] [--source ADDR]
//!                        [--destination ADDR] [--sni NAME] [--client-cert-sha256 HEX]
//!                        [--dpop PROOF] [--scheme S] [--cookie 'HEADER'|-|@FILE]
//!                        [--discovery FILE|URL]

mod convert;
mod explain;
mod explain_login;
mod explain_outbound;
mod keys;
mod load;
mod time;

use explain::{Options, Placement};
use mesh_oauth::compile;
use mesh_oauth::peer::FixedPeer;
use std::io::{Read, Write};
use std::process::ExitCode;

const CHECK_CONFIG_USAGE: &str = "  mesh-oauth check-config FILE
      Validates a plugin configuration as the filter does: the plugin's JSON, or every
      `kind: WasmPlugin` document's spec.pluginConfig in an Istio YAML file. When all are
      valid, it also prints `config sha256: <64 hex>` for each on standard error: the policy
      identity the filter logs and reports as the gauge mesh_oauth.config_hash.<plugin>
      (its first 12 hex digits as an integer).";
const CONVERT_USAGE: &str = "  mesh-oauth convert FILE... [--check] [--report] [--minimal] [--root-namespace NS] [--url URL]
      Turns Istio RequestAuthentication and AuthorizationPolicy resources (Kubernetes YAML,
      several documents per file, or `kubectl get -o yaml` lists) into one WasmPlugin per
      workload selector or targetRefs, deciding as Istio does, with the ServiceEntry and
      DestinationRule each key host needs, on standard output. What mesh-oauth cannot
      express is an error naming the resource and the field.
      --check               also validate each pluginConfig as check-config does, and say so
      --report              mode: report, to run beside the policies it replaces
      --minimal             answers: minimal: refusals name no cause to the client
      --root-namespace NS   Istio's root namespace, default istio-system: its policies
                            without a selector become the mesh baseline, WasmPlugin
                            mesh-oauth-baseline with priority 1000 (before every other
                            plugin), which hands the token on to the plugins after it
      --url URL             the module's url in each WasmPlugin";
const EXPLAIN_USAGE: &str = "  mesh-oauth explain --config FILE [--token TOKEN] [options]
      Shows step by step how the filter decides a request carrying TOKEN, and its answer.
      For a configuration with `outbound` entries: the entry the request meets and, with no
      token cached yet, the token endpoint calls it makes (TOKEN is the app's bearer token).
      --token TOKEN         the token, put where --header, --param or --cookie says; without
                            it the request carries only the headers given
      --token -             read the token from standard input
      --jwks FILE|URL       keys (a JWKS document) for the provider the token's iss selects,
                            when it fetches its keys (jwksUri or discovery)
      --method M            default GET
      --path P              default /
      --host H              the :authority, default localhost
      --now T               Unix seconds or RFC 3339 (2024-05-01T12:00:00Z); default: now
      --header NAME | --param NAME | --cookie NAME
                            where the token goes; default the Authorization header
      --cookie 'NAME=VALUE; ...' | --cookie - | --cookie @FILE
                            the browser's Cookie header (a value with `=`), read from
                            standard input (-) or from FILE (@FILE): keep session cookies
                            out of argv, which other users of the host can read.
                            For a configuration with `login`: the session cookie is opened
                            with the key ring in explain's own environment (the variable
                            `cookieKeysEnv` names, set to the Secret's value), and explain
                            shows which key opened it (by id), whether it is valid,
                            expired, tampered, from another host or a retired key, whether
                            a refresh or recheck is due, then the request as the filter
                            decides it with the session's token. A request to the
                            callbackPath shows the checks before the token call (state,
                            iss, error, return path); explain never redeems the code. A
                            request without a token shows whether it is sent to log in
                            (a top-level navigation) or gets the 401.
      --discovery FILE|URL  the login provider's discovery document (its endpoints and
                            RFC 9207 authorization_response_iss_parameter_supported)
      --request-header 'NAME: VALUE'
                            another request header (repeatable)
      --peer URI            the client certificate's URI SAN (spiffe://TD/ns/NS/sa/SA);
                            default: no mTLS
      --source ADDR         the client address as Envoy reports it (10.0.0.1:5000)
      --destination ADDR    the address the request came in on (10.0.0.2:8080)
      --sni NAME            the TLS server name the client asked for
      --client-cert-sha256 HEX
                            the client certificate's SHA-256 (certificate-bound tokens)
      --dpop PROOF          send the token as `Authorization: DPoP` with this DPoP proof
      --scheme S            the request's :scheme, default https";
const EXIT_STATUS: &str =
    "exit status: 0 done (for check-config: valid), 1 invalid input, 2 usage error";

/// The usage of the given commands.
fn usage(commands: &[&str]) -> String {
    format!("usage:\n{}\n{EXIT_STATUS}", commands.join("\n"))
}

/// The usage of every command.
fn full_usage() -> String {
    usage(&[CHECK_CONFIG_USAGE, CONVERT_USAGE, EXPLAIN_USAGE])
}

fn asks_help(arg: &str) -> bool {
    arg == "-h" || arg == "--help"
}

/// `--help` answers with the usage on standard output and succeeds, as a user expects.
fn help(command: &str) -> ExitCode {
    emit(&format!("{}\n", usage(&[command])));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, rest)) if command == "check-config" => check_config(rest),
        Some((command, rest)) if command == "explain" => explain_command(rest),
        Some((command, rest)) if command == "convert" => convert_command(rest),
        Some((flag, _)) if asks_help(flag) => {
            emit(&format!("{}\n", full_usage()));
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Failure::Usage("a command is needed".into())),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Invalid(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}\n{}", full_usage());
            ExitCode::from(2)
        }
    }
}

enum Failure {
    /// Input the tool cannot use: status 1.
    Invalid(String),
    /// A wrong command line: status 2.
    Usage(String),
}

/// Writes to standard output; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn check_config(args: &[String]) -> Result<ExitCode, Failure> {
    if args.iter().any(|arg| asks_help(arg)) {
        return Ok(help(CHECK_CONFIG_USAGE));
    }
    let [file] = args else {
        return Err(Failure::Usage("check-config takes one FILE".into()));
    };
    let plugins = load::load(file).map_err(|e| Failure::Invalid(format!("{file}: {e}")))?;
    let mut valid = true;
    let mut identities = Vec::new();
    for plugin in plugins {
        let label = match plugin.label.as_str() {
            "" => String::new(),
            label => format!("{label}: "),
        };
        if let Some(hash) = &plugin.hash {
            identities.push(format!("{label}config sha256: {}\n", hash.hex()));
        }
        match plugin.result {
            Ok(config) if !config.outbound.entries.is_empty() => emit(&format!(
                "ok: {label}{}, {}\n",
                count(config.providers.len(), "provider"),
                match config.outbound.entries.len() {
                    1 => "1 outbound entry".to_owned(),
                    n => format!("{n} outbound entries"),
                }
            )),
            Ok(config) => emit(&format!(
                "ok: {label}{}, {}\n",
                count(config.providers.len(), "provider"),
                count(config.rules.len(), "rule")
            )),
            Err(problem) => {
                eprintln!("error: {file}: {label}{problem}");
                valid = false;
            }
        }
    }
    // On standard error, after the `ok:` lines, whose format scripts already read; and only
    // for a file that is valid as a whole: the policy a pipeline may apply.
    if valid {
        eprint!("{}", identities.concat());
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

const DEFAULT_URL: &str = "oci://registry.example.com/platform/mesh-oauth:0.1.0";

fn convert_command(args: &[String]) -> Result<ExitCode, Failure> {
    let mut options = convert::Options {
        files: Vec::new(),
        root_namespace: "istio-system".into(),
        url: DEFAULT_URL.into(),
        report: false,
        minimal: false,
    };
    let mut check = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || {
            rest.next()
                .cloned()
                .ok_or_else(|| Failure::Usage(format!("{arg} needs a value")))
        };
        match arg.as_str() {
            flag if asks_help(flag) => return Ok(help(CONVERT_USAGE)),
            "--check" => check = true,
            "--report" => options.report = true,
            "--minimal" => options.minimal = true,
            "--root-namespace" => options.root_namespace = value()?,
            "--url" => options.url = value()?,
            flag if flag.starts_with("--") => {
                return Err(Failure::Usage(format!("unknown option {flag}")))
            }
            file => options.files.push(file.to_string()),
        }
    }
    if options.files.is_empty() {
        return Err(Failure::Usage("convert takes at least one FILE".into()));
    }
    let conversion = convert::convert(&options).map_err(Failure::Invalid)?;
    for note in &conversion.notes {
        eprintln!("note: {note}");
    }
    if options.url == DEFAULT_URL {
        eprintln!("note: each WasmPlugin's url is the placeholder {DEFAULT_URL}; pass --url");
    }
    if check {
        for (label, config) in &conversion.plugins {
            match compile::configure(&config.to_string()) {
                Ok(config) => eprintln!(
                    "ok: {label}: {}, {}",
                    count(config.providers.len(), "provider"),
                    count(config.rules.len(), "rule")
                ),
                Err(problem) => {
                    return Err(Failure::Invalid(format!("{label}: {problem}")));
                }
            }
        }
    }
    emit(&conversion.yaml);
    Ok(ExitCode::SUCCESS)
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn explain_command(args: &[String]) -> Result<ExitCode, Failure> {
    let mut config_path = None;
    let mut token = None;
    let mut jwks = None;
    let mut method = None;
    let mut path = None;
    let mut host = None;
    let mut now = None;
    let mut placement = None;
    let mut headers = Vec::new();
    let mut peer = FixedPeer::default();
    let mut dpop = None;
    let mut scheme = None;
    let mut discovery = None;
    let mut cookie_header = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        if asks_help(flag) {
            return Ok(help(EXPLAIN_USAGE));
        }
        let value = rest
            .next()
            .cloned()
            .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))?;
        let (slot, value) = match flag.as_str() {
            "--config" => (&mut config_path, value),
            "--token" => (&mut token, value),
            "--jwks" => (&mut jwks, value),
            "--method" => (&mut method, value),
            "--path" => (&mut path, value),
            "--host" => (&mut host, value),
            "--now" => (&mut now, value),
            "--peer" => (&mut peer.uri_san, value),
            "--source" => (&mut peer.source_address, value),
            "--destination" => (&mut peer.destination_address, value),
            "--sni" => (&mut peer.sni, value),
            "--client-cert-sha256" => (&mut peer.certificate_digest, value),
            "--dpop" => (&mut dpop, value),
            "--scheme" => (&mut scheme, value),
            "--discovery" => (&mut discovery, value),
            // A Cookie header (`=`), standard input or a file: the browser's cookies.
            "--cookie" if value.contains('=') || value == "-" || value.starts_with('@') => {
                (&mut cookie_header, value)
            }
            "--request-header" => {
                let (name, header_value) = value.split_once(':').ok_or_else(|| {
                    Failure::Usage(format!("--request-header {value}: expected 'NAME: VALUE'"))
                })?;
                headers.push((
                    name.trim().to_ascii_lowercase(),
                    header_value.trim().to_string(),
                ));
                continue;
            }
            "--header" | "--param" | "--cookie" => {
                if placement.is_some() {
                    return Err(Failure::Usage(
                        "one of --header, --param, --cookie at most".into(),
                    ));
                }
                placement = Some(match flag.as_str() {
                    "--header" => Placement::Header(value.to_ascii_lowercase()),
                    "--param" => Placement::Param(value),
                    _ => Placement::Cookie(value),
                });
                continue;
            }
            other => return Err(Failure::Usage(format!("unknown option {other}"))),
        };
        if slot.replace(value).is_some() {
            return Err(Failure::Usage(format!("{flag} given twice")));
        }
    }
    let config_path = config_path.ok_or_else(|| Failure::Usage("--config is needed".into()))?;
    if token.as_deref() == Some("-") && cookie_header.as_deref() == Some("-") {
        return Err(Failure::Usage(
            "--token - and --cookie - both read standard input: give one as @FILE".into(),
        ));
    }
    let token = token.map(read_token).transpose()?;
    if let Some(cookie) = cookie_header.map(read_cookie).transpose()? {
        headers.push(("cookie".to_string(), cookie));
    }
    if dpop.is_some() && token.is_none() {
        return Err(Failure::Usage("--dpop needs --token".into()));
    }
    let now_ms = match now {
        Some(text) => time::parse_now(&text).map_err(Failure::Usage)?,
        None => system_now_ms(),
    };

    let mut plugins = load::load_with(&config_path, load::Secrets::Explain)
        .map_err(|e| Failure::Invalid(format!("{config_path}: {e}")))?;
    let plugin = match plugins.len() {
        1 => plugins.remove(0),
        n => {
            return Err(Failure::Invalid(format!(
                "{config_path}: holds {n} WasmPlugins; explain takes a file with one"
            )))
        }
    };
    let label = match plugin.label.as_str() {
        "" => String::new(),
        label => format!("{label}: "),
    };
    let config = plugin
        .result
        .map_err(|problem| Failure::Invalid(format!("{config_path}: {label}{problem}")))?;
    let options = Options {
        token,
        jwks,
        method: method.unwrap_or_else(|| "GET".into()),
        path: path.unwrap_or_else(|| "/".into()),
        host: host.unwrap_or_else(|| "localhost".into()),
        now_ms,
        placement: placement.unwrap_or(Placement::Header("authorization".into())),
        headers,
        peer,
        dpop,
        scheme: scheme.unwrap_or_else(|| "https".into()),
    };
    let report = if !config.outbound.entries.is_empty() {
        explain_outbound::explain(&config, &options)
    } else if !config.logins.is_empty() {
        let inputs = explain_login::LoginInputs {
            discovery,
            cookie_keys: load::cookie_key_variables(&config_path),
        };
        explain_login::explain(&config, &options, &inputs)
    } else {
        explain::explain(&config, &options)
    }
    .map_err(Failure::Invalid)?;
    emit(&report);
    Ok(ExitCode::SUCCESS)
}

fn read_token(given: String) -> Result<String, Failure> {
    let token = if given == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Invalid(format!("--token -: cannot read standard input: {e}")))?;
        text.trim().to_string()
    } else {
        given
    };
    if token.is_empty() {
        return Err(Failure::Usage("the token is empty".into()));
    }
    Ok(token)
}

/// `--cookie`: the header as given, or read from standard input (`-`) or a file (`@FILE`),
/// so that a live session cookie need not appear in argv (`ps`, /proc, shell history).
fn read_cookie(given: String) -> Result<String, Failure> {
    let text = if given == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            Failure::Invalid(format!("--cookie -: cannot read standard input: {e}"))
        })?;
        text
    } else if let Some(file) = given.strip_prefix('@') {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::Invalid(format!("--cookie @{file}: cannot read: {e}")))?
    } else {
        given
    };
    // A copied `Cookie: a=b` line works as well as its value.
    let text = text.trim();
    let text = text
        .get(..7)
        .filter(|head| head.eq_ignore_ascii_case("cookie:"))
        .map_or(text, |_| text[7..].trim());
    if text.is_empty() {
        return Err(Failure::Usage("the Cookie header is empty".into()));
    }
    Ok(text.to_string())
}

fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
