//! `custos hpvs`: IBM Hyper Protect contracts and hyper-protect-basic decryption.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::HpvsCommand;

pub fn run(command: HpvsCommand) -> anyhow::Result<ExitCode> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    match command {
        HpvsCommand::Contract {
            workload,
            compose,
            volumes,
            env,
            syslog,
            env_seeds,
            cert,
            signing_key,
            output,
        } => {
            let cert = custos_hpvs::certificate_public_key(&read(&cert)?).context("--cert")?;
            let signing =
                custos_hpvs::private_key(&read(&signing_key)?).context("--signing-key")?;
            let workload = match (workload, compose) {
                (Some(path), _) => read(&path)?,
                (None, Some(path)) => {
                    let compose = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let volumes = volumes
                        .iter()
                        .map(|v| match v.splitn(3, ':').collect::<Vec<_>>()[..] {
                            [name, mount, seed] => Ok(custos_hpvs::Volume {
                                name: name.into(),
                                mount: mount.into(),
                                seed: seed.into(),
                            }),
                            _ => Err(anyhow::anyhow!(
                                "--volume must be NAME:MOUNT:SEED, not {v:?}"
                            )),
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    custos_hpvs::compose_workload(&compose, &volumes)?
                }
                (None, None) => anyhow::bail!("give --workload or --compose"),
            };
            let env = match (env, syslog) {
                (Some(path), _) => read(&path)?,
                (None, Some(syslog)) => {
                    let seeds = env_seeds
                        .iter()
                        .map(|s| {
                            s.split_once(':')
                                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                                .ok_or_else(|| {
                                    anyhow::anyhow!("--env-seed must be NAME:SEED, not {s:?}")
                                })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    custos_hpvs::env_section(&syslog, &seeds)?
                }
                (None, None) => anyhow::bail!("give --env or --syslog"),
            };
            let contract = custos_hpvs::build_contract(&workload, &env, &cert, &signing)?;
            match output {
                Some(path) => {
                    std::fs::write(&path, contract.to_yaml())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote the contract to {}", path.display());
                }
                None => out!("{}", contract.to_yaml().trim_end()),
            }
        }
        HpvsCommand::Decrypt { key, file } => {
            let key = custos_hpvs::private_key(&read(&key)?).context("--key")?;
            let blob = match file {
                Some(path) => read(&path)?,
                None => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text
                }
            };
            let plaintext = custos_hpvs::decrypt_section(&blob, &key)?;
            use std::io::Write as _;
            std::io::stdout().write_all(&plaintext)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
