//! Diffusion schedules exactly as guided-diffusion / glide_text2im compute
//! them (f64): beta schedules, `space_timesteps` respacing, the respaced
//! per-index arrays, and the per-step f32 coefficients for the sampler kernel.

use crate::error::{Error, Result};
use crate::kernels::sampler::StepCoeffs;

/// `get_named_beta_schedule(name, T)`.
pub fn betas(name: &str, steps: usize) -> Result<Vec<f64>> {
    match name {
        "linear" => {
            let scale = 1000.0 / steps as f64;
            let (a, b) = (scale * 0.0001, scale * 0.02);
            // numpy.linspace: a + i*step, last element exactly b.
            let step = (b - a) / (steps as f64 - 1.0);
            Ok((0..steps)
                .map(|i| {
                    if i + 1 == steps {
                        b
                    } else {
                        a + i as f64 * step
                    }
                })
                .collect())
        }
        "squaredcos_cap_v2" => {
            let ab = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                    .cos()
                    .powi(2)
            };
            Ok((0..steps)
                .map(|i| {
                    let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                    (1.0 - ab(t2) / ab(t1)).min(0.999)
                })
                .collect())
        }
        _ => Err(Error::Invalid(format!(
            "unknown noise schedule '{name}' (linear, squaredcos_cap_v2)"
        ))),
    }
}

/// Python's round(): half to even.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// `space_timesteps(T, spec)`: the sorted retained original timesteps.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>> {
    let bad = |m: &str| Error::Invalid(format!("respacing '{spec}': {m}"));
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((0..num_timesteps).collect());
    }
    if let Some(n) = spec.strip_prefix("ddim") {
        let n: usize = n.parse().map_err(|_| bad("expected ddimN"))?;
        for stride in 1..num_timesteps {
            if num_timesteps.div_ceil(stride) == n {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(bad("no integer stride gives that many steps"));
    }
    if spec == "fast27" {
        let mut s = space_timesteps(num_timesteps, "10,10,3,2,2")?;
        s.retain(|&t| t != num_timesteps - 1);
        s.push(num_timesteps - 3);
        s.sort_unstable();
        s.dedup();
        return Ok(s);
    }
    let counts: Vec<usize> = spec
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .map_err(|_| bad("expected comma-separated step counts"))
        })
        .collect::<Result<_>>()?;
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0;
    let mut out = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + (i < extra) as usize;
        if size < count {
            return Err(bad(&format!(
                "cannot divide section of {size} steps into {count}"
            )));
        }
        let stride = if count <= 1 {
            1.0
        } else {
            (size as f64 - 1.0) / (count as f64 - 1.0)
        };
        let mut cur = 0.0f64;
        for _ in 0..count {
            out.push(start + round_half_even(cur) as usize);
            cur += stride;
        }
        start += size;
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The respaced diffusion: per respaced index t' (0..S), all f64 arrays.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub timestep_map: Vec<usize>,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    pub posterior_variance: Vec<f64>,
}

impl Schedule {
    pub fn new(noise_schedule: &str, steps: usize, respacing: &str) -> Result<Self> {
        let base = betas(noise_schedule, steps)?;
        let use_ts = space_timesteps(steps, respacing)?;
        if use_ts.is_empty() {
            return Err(Error::Invalid(format!(
                "respacing '{respacing}' gives no steps"
            )));
        }
        let mut ac = 1.0;
        let mut last = 1.0;
        let mut new_betas = Vec::new();
        let mut map = Vec::new();
        for (i, b) in base.iter().enumerate() {
            ac *= 1.0 - b;
            if use_ts.binary_search(&i).is_ok() {
                new_betas.push(1.0 - ac / last);
                last = ac;
                map.push(i);
            }
        }
        Ok(Self::from_betas(new_betas, map))
    }

    fn from_betas(betas: Vec<f64>, timestep_map: Vec<usize>) -> Self {
        let n = betas.len();
        let mut ac = Vec::with_capacity(n);
        let mut p = 1.0;
        for b in &betas {
            p *= 1.0 - b;
            ac.push(p);
        }
        let mut prev = vec![1.0];
        prev.extend_from_slice(&ac[..n - 1]);
        let post_var: Vec<f64> = (0..n)
            .map(|i| betas[i] * (1.0 - prev[i]) / (1.0 - ac[i]))
            .collect();
        let clipped: Vec<f64> = (0..n)
            .map(|i| {
                if i == 0 {
                    post_var.get(1).copied().unwrap_or(post_var[0])
                } else {
                    post_var[i]
                }
                .ln()
            })
            .collect();
        Schedule {
            timestep_map,
            posterior_mean_coef1: (0..n)
                .map(|i| betas[i] * prev[i].sqrt() / (1.0 - ac[i]))
                .collect(),
            posterior_mean_coef2: (0..n)
                .map(|i| (1.0 - prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - ac[i]))
                .collect(),
            posterior_log_variance_clipped: clipped,
            posterior_variance: post_var,
            alphas_cumprod: ac,
            alphas_cumprod_prev: prev,
            betas,
        }
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// Coefficients of respaced step t' gathered in f64, cast to f32.
    pub fn coeffs(&self, t: usize, ddim_eta: f64) -> StepCoeffs {
        let (ac, prev) = (self.alphas_cumprod[t], self.alphas_cumprod_prev[t]);
        let sigma = ddim_eta * ((1.0 - prev) / (1.0 - ac)).sqrt() * (1.0 - ac / prev).sqrt();
        StepCoeffs {
            sqrt_recip_ac: (1.0 / ac).sqrt() as f32,
            sqrt_recipm1_ac: (1.0 / ac - 1.0).sqrt() as f32,
            posterior_coef1: self.posterior_mean_coef1[t] as f32,
            posterior_coef2: self.posterior_mean_coef2[t] as f32,
            max_log: self.betas[t].ln() as f32,
            min_log: self.posterior_log_variance_clipped[t] as f32,
            sqrt_ac_prev: prev.sqrt() as f32,
            ddim_eps_coef: (1.0 - prev - sigma * sigma).sqrt() as f32,
            ddim_sigma: sigma as f32,
            fixed_log_var: self.posterior_log_variance_clipped[t] as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_respacings() {
        assert_eq!(
            space_timesteps(1000, "fast27").unwrap(),
            vec![
                0, 22, 44, 66, 88, 111, 133, 155, 177, 199, 200, 222, 244, 266, 288, 311, 333, 355,
                377, 399, 400, 500, 599, 600, 799, 800, 997
            ]
        );
        assert_eq!(
            space_timesteps(1000, "10").unwrap(),
            (0..10).map(|i| i * 111).collect::<Vec<_>>()
        );
        assert_eq!(
            space_timesteps(1000, "ddim50").unwrap(),
            (0..1000).step_by(20).collect::<Vec<_>>()
        );
        assert!(space_timesteps(1000, "abc").is_err());
        assert!(space_timesteps(10, "20").is_err());
        // Zero steps is an error, not an empty schedule.
        assert!(Schedule::new("linear", 1000, "0").is_err());
        assert!(Schedule::new("linear", 1000, "0,0").is_err());
    }
}
