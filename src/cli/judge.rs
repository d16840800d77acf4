//! `rmr1 judge`: send one judgment to a server, stream the reasoning, print the result readably.

use anyhow::{bail, Context, Result};
use rmr1::api::proto::judge_service_client::JudgeServiceClient;
use rmr1::api::proto::{
    judge_request, judge_stream_event, ConversationPair, JudgeOptions, JudgeRequest, JudgeResponse,
    Message, ResponsePair, Role, TaskType, Verdict,
};
use serde::Deserialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct JudgeArgs {
    /// Server address (https:// for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    remote: rmr1::remote_args::RemoteArgs,
    /// The user's question (single turn).
    #[arg(long, conflicts_with = "file")]
    question: Option<String>,
    /// Candidate A's reply.
    #[arg(long, conflicts_with = "file")]
    a: Option<String>,
    /// Candidate B's reply.
    #[arg(long, conflicts_with = "file")]
    b: Option<String>,
    /// A JSON file: {"question", "response_a", "response_b"}, or {"conversation": [{"role",
    /// "content"}...], "response_a", "response_b"}, or {"conversation_a": [...], "conversation_b": [...]}.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Served model name; default: the server's default model.
    #[arg(long, default_value = "")]
    model: String,
    #[arg(long)]
    max_new_tokens: Option<u32>,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Judge in both orders and combine (position-debiased).
    #[arg(long)]
    both_orders: bool,
    /// Wait up to this many seconds for the server to report SERVING first.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Do not print the reasoning as it is generated.
    #[arg(long)]
    quiet: bool,
}

#[derive(Deserialize)]
struct TurnJson {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PairJson {
    question: Option<String>,
    conversation: Option<Vec<TurnJson>>,
    response_a: Option<String>,
    response_b: Option<String>,
    conversation_a: Option<Vec<TurnJson>>,
    conversation_b: Option<Vec<TurnJson>>,
}

fn message(role: &str, content: &str) -> Result<Message> {
    let role = match role {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" => Role::System,
        other => bail!("role {other:?} is not user, assistant or system"),
    };
    Ok(Message {
        role: role as i32,
        content: content.into(),
    })
}

fn messages(turns: &[TurnJson]) -> Result<Vec<Message>> {
    turns.iter().map(|t| message(&t.role, &t.content)).collect()
}

fn input(args: &JudgeArgs) -> Result<judge_request::Input> {
    let pair = match &args.file {
        Some(path) => serde_json::from_str::<PairJson>(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => PairJson {
            question: args.question.clone(),
            conversation: None,
            response_a: args.a.clone(),
            response_b: args.b.clone(),
            conversation_a: None,
            conversation_b: None,
        },
    };
    if let (Some(a), Some(b)) = (&pair.conversation_a, &pair.conversation_b) {
        return Ok(judge_request::Input::Conversations(ConversationPair {
            conversation_a: messages(a)?,
            conversation_b: messages(b)?,
        }));
    }
    let conversation = match (&pair.question, &pair.conversation) {
        (Some(q), None) => vec![message("user", q)?],
        (None, Some(turns)) => messages(turns)?,
        _ => {
            bail!("give either a question or a conversation (or conversation_a and conversation_b)")
        }
    };
    let (Some(a), Some(b)) = (pair.response_a, pair.response_b) else {
        bail!("both response_a and response_b are required (--a and --b)");
    };
    Ok(judge_request::Input::Responses(ResponsePair {
        conversation,
        response_a: a,
        response_b: b,
    }))
}

pub fn run(args: JudgeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(judge(args))
}

async fn judge(args: JudgeArgs) -> Result<()> {
    let request = JudgeRequest {
        request_id: format!("cli-{}", std::process::id()),
        model: args.model.clone(),
        input: Some(input(&args)?),
        options: Some(JudgeOptions {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: None,
            seed: args.seed,
            both_orders: args.both_orders,
            include_reasoning: true,
        }),
    };
    let access = args.remote.access()?;
    if args.wait > 0 {
        rmr1::api::readiness::wait_until_serving(&args.addr, &access, args.wait).await?;
    }
    let mut client = JudgeServiceClient::new(access.connect(&args.addr).await?)
        .max_decoding_message_size(64 << 20);
    let mut stream = client.judge_stream(request).await?.into_inner();
    let mut stdout = std::io::stdout();
    let mut response = None;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(judge_stream_event::Event::Delta(d)) if !args.quiet && d.order == 0 => {
                write!(stdout, "{}", d.text)?;
                stdout.flush()?;
            }
            Some(judge_stream_event::Event::Result(r)) => response = Some(r),
            _ => {}
        }
    }
    let response = response.context("the server ended the stream without a result")?;
    if !args.quiet {
        writeln!(stdout, "\n")?;
    }
    print_summary(&response);
    Ok(())
}

/// `text` with every line after the first indented to the value column.
fn field(label: &str, text: &str) {
    let mut lines = text.trim().lines();
    println!("{label:<12}{}", lines.next().unwrap_or(""));
    for line in lines {
        println!("{:<12}{line}", "");
    }
}

/// The judgment as a user reads it: what kind of task the judge saw, its rubric or its own
/// solution, the evaluation, the verdict with its probabilities, and what it cost.
fn print_summary(r: &JudgeResponse) {
    let task = match r.task_type() {
        TaskType::Chat => "chat",
        TaskType::Reasoning => "reasoning",
        TaskType::Unspecified => "not stated",
    };
    println!("task type:  {task}");
    for (i, item) in r.rubric.iter().enumerate() {
        let label = format!("rubric {}:", i + 1);
        match item.weight_percent {
            Some(w) => field(&label, &format!("({w}%) {}", item.text)),
            None => field(&label, &item.text),
        }
    }
    if !r.justification.trim().is_empty() {
        field("why:", &r.justification);
    }
    if !r.solution.trim().is_empty() {
        field("solution:", &r.solution);
    }
    if !r.evaluation.trim().is_empty() {
        field("evaluation:", &r.evaluation);
    }
    let verdict = match r.verdict() {
        Verdict::A => "A".to_string(),
        Verdict::B => "B".to_string(),
        _ => format!("INVALID ({})", r.invalid_reason),
    };
    println!("verdict:    {verdict}");
    if let (Some(a), Some(b)) = (r.prob_a, r.prob_b) {
        println!("P(A), P(B): {a:.4}, {b:.4}");
    }
    if r.orders.len() > 1 {
        for o in &r.orders {
            println!(
                "order {}:    verdict {:?}, P(A) {}",
                if o.swapped { "B/A" } else { "A/B" },
                o.verdict(),
                o.prob_a.map_or("-".into(), |p| format!("{p:.4}"))
            );
        }
    }
    if let (Some(u), Some(t)) = (&r.usage, &r.timings) {
        println!(
            "usage:      {} prompt ({} cached) + {} generated tokens; {:.2} s, first token {:.2} s",
            u.prompt_tokens,
            u.cached_tokens,
            u.completion_tokens,
            t.total_seconds,
            t.time_to_first_token_seconds
        );
    }
}
