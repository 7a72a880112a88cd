//! Turns a request's sampling fields into candle's sampler settings.

use agentmesh_llm::CompletionRequest;
use candle_transformers::generation::Sampling;

/// Temperature 0 or unset means greedy decoding; top_p 1 or unset means no nucleus cut.
pub(crate) fn from_request(req: &CompletionRequest) -> Result<Sampling, String> {
    let temperature = req.temperature.unwrap_or(0.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(format!(
            "temperature must be between 0 and 2, got {temperature}"
        ));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(format!("top_p must be above 0 and at most 1, got {top_p}"));
    }
    Ok(if temperature == 0.0 {
        Sampling::ArgMax
    } else if top_p < 1.0 {
        Sampling::TopP {
            p: top_p,
            temperature,
        }
    } else {
        Sampling::All { temperature }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(temperature: Option<f64>, top_p: Option<f64>) -> CompletionRequest {
        CompletionRequest {
            temperature,
            top_p,
            ..CompletionRequest::default()
        }
    }

    #[test]
    fn zero_or_missing_temperature_is_greedy() {
        assert!(matches!(
            from_request(&req(None, None)),
            Ok(Sampling::ArgMax)
        ));
        assert!(matches!(
            from_request(&req(Some(0.0), Some(0.5))),
            Ok(Sampling::ArgMax)
        ));
    }

    #[test]
    fn temperature_and_top_p_are_passed_on() {
        let sampling = from_request(&req(Some(0.7), Some(0.9))).unwrap();
        assert!(
            matches!(sampling, Sampling::TopP { p, temperature } if p == 0.9 && temperature == 0.7)
        );
        let sampling = from_request(&req(Some(1.0), None)).unwrap();
        assert!(matches!(sampling, Sampling::All { temperature } if temperature == 1.0));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        assert!(from_request(&req(Some(-1.0), None)).is_err());
        assert!(from_request(&req(Some(f64::NAN), None)).is_err());
        assert!(from_request(&req(None, Some(0.0))).is_err());
        assert!(from_request(&req(None, Some(1.5))).is_err());
    }
}
