//! Wire types <-> judge types. Validation of everything the judge layer does not check itself
//! (enums, options, ids) happens here, so handlers only see valid values; every error names the
//! field it is about.

use super::access::Caller;
use super::proto;
use crate::engine::request::Timings;
use crate::engine::Usage;
use crate::judge::judge_model::JudgeModel;
use crate::judge::pipeline::{JudgeParams, JudgeReport, OrderReport};
use crate::judge::ranking::RankReport;
use crate::judge::{InvalidReason, PairInput, ParsedJudgment, Role, Side, TaskType, Turn};
use std::time::Duration;
use tonic::Status;

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

pub fn turns(field: &str, messages: &[proto::Message]) -> Result<Vec<Turn>, Status> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match proto::Role::try_from(m.role) {
                Ok(proto::Role::User) => Role::User,
                Ok(proto::Role::Assistant) => Role::Assistant,
                Ok(proto::Role::System) => Role::System,
                Ok(proto::Role::Unspecified) => {
                    return Err(invalid(format!("{field}[{i}].role is unspecified")))
                }
                Err(_) => return Err(invalid(format!("{field}[{i}].role {} is unknown", m.role))),
            };
            Ok(Turn::new(role, m.content.clone()))
        })
        .collect()
}

/// The pair to judge, validated (roles, order, empty fields).
pub fn pair_input(request: &proto::JudgeRequest) -> Result<PairInput, Status> {
    let input = match &request.input {
        Some(proto::judge_request::Input::Responses(r)) => PairInput::Responses {
            conversation: turns("responses.conversation", &r.conversation)?,
            response_a: r.response_a.clone(),
            response_b: r.response_b.clone(),
        },
        Some(proto::judge_request::Input::Conversations(c)) => PairInput::Conversations {
            a: turns("conversations.conversation_a", &c.conversation_a)?,
            b: turns("conversations.conversation_b", &c.conversation_b)?,
        },
        None => {
            return Err(invalid(
                "input is required: set `responses` or `conversations`",
            ))
        }
    };
    input.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(input)
}

/// Request options with defaults filled in from the model, for `caller`.
pub fn judge_params(
    options: Option<&proto::JudgeOptions>,
    model: &JudgeModel,
    caller: &Caller,
) -> Result<JudgeParams, Status> {
    let default = proto::JudgeOptions::default();
    let o = options.unwrap_or(&default);
    let max_new_tokens = match o.max_new_tokens {
        None => model.default_max_new_tokens,
        Some(0) => return Err(invalid("options.max_new_tokens must be at least 1")),
        Some(n) => n as usize,
    };
    let temperature = o.temperature.unwrap_or(0.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(invalid(format!(
            "options.temperature must be a finite number >= 0, got {temperature}"
        )));
    }
    let top_p = o.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(format!(
            "options.top_p must be in (0, 1], got {top_p}"
        )));
    }
    Ok(JudgeParams {
        // The engine ends a sequence at the context length anyway; capping here keeps the
        // number meaningful in logs.
        max_new_tokens: max_new_tokens.min(model.description.context_length),
        temperature,
        top_p,
        seed: o.seed,
        both_orders: o.both_orders,
        client: caller.identity.clone().into(),
    })
}

fn verdict(v: &Result<Side, InvalidReason>) -> (proto::Verdict, String) {
    match v {
        Ok(Side::A) => (proto::Verdict::A, String::new()),
        Ok(Side::B) => (proto::Verdict::B, String::new()),
        Err(reason) => (proto::Verdict::Invalid, reason.to_string()),
    }
}

/// A verdict given as shown to the model, in the request's terms.
fn unswap(v: Result<Side, InvalidReason>, swapped: bool) -> Result<Side, InvalidReason> {
    match v {
        Ok(side) if swapped => Ok(side.other()),
        other => other,
    }
}

fn task_type(t: Option<TaskType>) -> proto::TaskType {
    match t {
        Some(TaskType::Chat) => proto::TaskType::Chat,
        Some(TaskType::Reasoning) => proto::TaskType::Reasoning,
        None => proto::TaskType::Unspecified,
    }
}

fn rubric(parsed: &ParsedJudgment) -> Vec<proto::RubricItem> {
    parsed
        .rubric
        .iter()
        .map(|item| proto::RubricItem {
            text: item.text.clone(),
            weight_percent: item.weight,
        })
        .collect()
}

fn usage(u: &Usage) -> proto::Usage {
    proto::Usage {
        prompt_tokens: u.prompt_tokens as u32,
        completion_tokens: u.completion_tokens as u32,
        cached_tokens: u.cached_tokens as u32,
    }
}

fn timings(t: &Timings) -> proto::Timings {
    proto::Timings {
        queue_seconds: t.queue.as_secs_f64(),
        time_to_first_token_seconds: t.time_to_first_token.as_secs_f64(),
        total_seconds: t.total.as_secs_f64(),
        preemptions: t.preemptions,
    }
}

fn call_timings(total: Duration, orders: &[OrderReport]) -> proto::Timings {
    proto::Timings {
        queue_seconds: max_seconds(orders, |t| t.queue),
        time_to_first_token_seconds: max_seconds(orders, |t| t.time_to_first_token),
        total_seconds: total.as_secs_f64(),
        preemptions: orders.iter().map(|o| o.timings.preemptions).sum(),
    }
}

fn max_seconds(orders: &[OrderReport], f: impl Fn(&Timings) -> Duration) -> f64 {
    orders
        .iter()
        .map(|o| f(&o.timings).as_secs_f64())
        .fold(0.0, f64::max)
}

fn order_judgment(o: &OrderReport, include_reasoning: bool) -> proto::OrderJudgment {
    let (v, invalid_reason) = verdict(&unswap(o.verdict_shown, o.swapped));
    let strict = match o.strict_verdict_shown {
        Some(side) => verdict(&unswap(Ok(side), o.swapped)).0,
        None => proto::Verdict::Invalid,
    };
    let text = |s: &Option<String>| {
        if include_reasoning {
            s.clone().unwrap_or_default()
        } else {
            String::new()
        }
    };
    proto::OrderJudgment {
        swapped: o.swapped,
        verdict: v as i32,
        invalid_reason,
        prob_a: o.prob_a_shown.map(|p| if o.swapped { 1.0 - p } else { p }),
        strict_verdict: strict as i32,
        task_type: task_type(o.parsed.task_type) as i32,
        rubric: if include_reasoning {
            rubric(&o.parsed)
        } else {
            Vec::new()
        },
        justification: text(&o.parsed.justification),
        solution: text(&o.parsed.solution),
        evaluation: text(&o.parsed.evaluation),
        raw_output: text(&Some(o.raw_output.clone())),
        finish_reason: o.finish_reason.as_str().into(),
        usage: Some(usage(&o.usage)),
        timings: Some(timings(&o.timings)),
        prob_forced: o.prob_forced,
    }
}

pub fn judge_response(
    request_id: &str,
    model: &JudgeModel,
    report: &JudgeReport,
    include_reasoning: bool,
) -> proto::JudgeResponse {
    let orders: Vec<proto::OrderJudgment> = report
        .orders
        .iter()
        .map(|o| order_judgment(o, include_reasoning))
        .collect();
    let (v, invalid_reason) = verdict(&report.combined.verdict);
    let first = orders.first().cloned().unwrap_or_default();
    proto::JudgeResponse {
        request_id: request_id.into(),
        model: model.name().into(),
        verdict: v as i32,
        invalid_reason,
        prob_a: report.combined.p_a,
        prob_b: report.combined.p_a.map(|p| 1.0 - p),
        task_type: first.task_type,
        rubric: first.rubric,
        justification: first.justification,
        solution: first.solution,
        evaluation: first.evaluation,
        raw_output: first.raw_output,
        usage: Some(usage(&report.usage)),
        timings: Some(call_timings(report.elapsed, &report.orders)),
        orders,
    }
}

pub fn rank_response(request_id: &str, model: &JudgeModel, r: &RankReport) -> proto::RankResponse {
    proto::RankResponse {
        request_id: request_id.into(),
        model: model.name().into(),
        order: r.order.iter().map(|&i| i as u32).collect(),
        scores: (0..r.scores.len())
            .map(|i| proto::CandidateScore {
                index: i as u32,
                score: r.scores[i],
                win_rate: r.win_rates[i],
                comparisons: r.comparisons_per_candidate[i] as u32,
            })
            .collect(),
        method: r.method.into(),
        comparisons: r
            .comparisons
            .iter()
            .map(|c| {
                let (v, invalid_reason) = verdict(&c.verdict_shown);
                proto::PairwiseComparison {
                    first: c.first as u32,
                    second: c.second as u32,
                    verdict: v as i32,
                    prob_first: c.prob_first,
                    invalid_reason,
                }
            })
            .collect(),
        usage: Some(usage(&r.usage)),
        timings: Some(proto::Timings {
            total_seconds: r.elapsed.as_secs_f64(),
            ..Default::default()
        }),
    }
}
