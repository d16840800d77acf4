//! What a judgment compares: a shared conversation with two candidate replies, or two whole
//! conversations. Validation lives here so that every message names the offending field — the
//! messages are returned to clients verbatim as gRPC `INVALID_ARGUMENT` details.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

impl Turn {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Turn {
            role,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Turn::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Turn::new(Role::Assistant, content)
    }
}

/// The two candidates of one pairwise judgment, in the order they will be shown (A first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairInput {
    /// The conversation so far (ending with a user turn) and two candidate final replies.
    Responses {
        conversation: Vec<Turn>,
        response_a: String,
        response_b: String,
    },
    /// Two whole conversations, each ending with its own assistant reply (their earlier turns may
    /// differ, e.g. when two policies were rolled out over several turns).
    Conversations { a: Vec<Turn>, b: Vec<Turn> },
}

impl PairInput {
    /// Bytes of text in all turns and replies: what rendering and tokenizing will have to read.
    pub fn text_bytes(&self) -> usize {
        let turns = |turns: &[Turn]| turns.iter().map(|t| t.content.len()).sum::<usize>();
        match self {
            Self::Responses {
                conversation,
                response_a,
                response_b,
            } => turns(conversation) + response_a.len() + response_b.len(),
            Self::Conversations { a, b } => turns(a) + turns(b),
        }
    }
}

/// Why a [`PairInput`] cannot be judged. Every message starts with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// No conversation at all (an empty reply or turn is fine: see [`validate_turns`]).
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field}[{index}]: system messages are not supported by the RM-R1 prompt")]
    SystemMessage { field: &'static str, index: usize },
    #[error("{field}[{index}]: the first message must be from the user")]
    FirstNotUser { field: &'static str, index: usize },
    #[error("{field}[{index}]: roles must alternate user/assistant")]
    RolesNotAlternating { field: &'static str, index: usize },
    #[error("{field} must end with {} message", article(.expected))]
    WrongLastRole { field: &'static str, expected: Role },
}

fn article(role: &Role) -> &'static str {
    match role {
        Role::System => "a system",
        Role::User => "a user",
        Role::Assistant => "an assistant",
    }
}

/// The rules every conversation obeys, checked in order so the first message is the most basic
/// problem: at least one turn; per turn, no system role (RM-R1 templates have nowhere to put it),
/// then user/assistant alternation starting with the user (the flattened `User:` / `Chatbot X:`
/// lines would otherwise misrepresent who said what); finally the required last role.
///
/// Empty or whitespace-only content is allowed anywhere, replies included: RLHF policies produce
/// empty replies and benchmarks contain them (RMB has blank rejected answers and empty last user
/// turns), and the RM-R1 prompt renders them as an empty section. A judge that refused them would
/// drop those pairs from the score's denominators.
fn validate_turns(field: &'static str, turns: &[Turn], last: Role) -> Result<(), InputError> {
    if turns.is_empty() {
        return Err(InputError::Empty { field });
    }
    for (index, turn) in turns.iter().enumerate() {
        let expected = if index % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if turn.role == Role::System {
            return Err(InputError::SystemMessage { field, index });
        }
        if turn.role != expected {
            return Err(if index == 0 {
                InputError::FirstNotUser { field, index }
            } else {
                InputError::RolesNotAlternating { field, index }
            });
        }
    }
    if turns.last().map(|turn| turn.role) != Some(last) {
        return Err(InputError::WrongLastRole {
            field,
            expected: last,
        });
    }
    Ok(())
}

impl PairInput {
    /// Checks the input can be rendered faithfully; see [`validate_turns`] for the rules. Field
    /// names are those of the API: `conversation`, `response_a`, `response_b`, `conversation_a`,
    /// `conversation_b`.
    pub fn validate(&self) -> Result<(), InputError> {
        match self {
            PairInput::Responses {
                conversation,
                response_a,
                response_b,
            } => {
                let _ = (response_a, response_b); // any text, empty included
                validate_turns("conversation", conversation, Role::User)
            }
            PairInput::Conversations { a, b } => {
                validate_turns("conversation_a", a, Role::Assistant)?;
                validate_turns("conversation_b", b, Role::Assistant)
            }
        }
    }

    /// The same pair shown in the other order (B as Chatbot A), for position debiasing.
    pub fn swapped(&self) -> PairInput {
        match self {
            PairInput::Responses {
                conversation,
                response_a,
                response_b,
            } => PairInput::Responses {
                conversation: conversation.clone(),
                response_a: response_b.clone(),
                response_b: response_a.clone(),
            },
            PairInput::Conversations { a, b } => PairInput::Conversations {
                a: b.clone(),
                b: a.clone(),
            },
        }
    }

    /// True when the shared context is exactly one user message, which selects the single-turn
    /// templates (`{question}` / `{answer_a}` / `{answer_b}`). Two conversations count as
    /// single-turn only when both are `[user, assistant]` with byte-identical user text: otherwise
    /// one `{question}` could not represent both.
    pub fn is_single_turn(&self) -> bool {
        match self {
            PairInput::Responses { conversation, .. } => {
                matches!(conversation.as_slice(), [only] if only.role == Role::User)
            }
            PairInput::Conversations { a, b } => match (a.as_slice(), b.as_slice()) {
                ([user_a, reply_a], [user_b, reply_b]) => {
                    user_a.role == Role::User
                        && user_b.role == Role::User
                        && reply_a.role == Role::Assistant
                        && reply_b.role == Role::Assistant
                        && user_a.content == user_b.content
                }
                _ => false,
            },
        }
    }
}
