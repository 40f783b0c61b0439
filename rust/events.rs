//! The event kinds of the callback system. Mirrors `python/rlm_toolkit/events.py`, the one catalogue;
//! `tests/test_catalogue.py` fails when the two drift.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    LlmStart,
    LlmEnd,
    LlmNewToken,
    ToolStart,
    ToolEnd,
    MemoryStore,
    MemoryRecall,
    Retry,
    Error,
    RunStart,
    RunEnd,
}

pub const EVENT_COUNT: usize = 11;

pub struct EventSpec {
    pub kind: EventKind,
    pub name: &'static str,
    pub args: &'static [&'static str],
    pub fields: &'static [&'static str],
    pub has_model: bool,
}

pub const EVENTS: [EventSpec; EVENT_COUNT] = [
    EventSpec { kind: EventKind::LlmStart, name: "llm_start", args: &["prompt"], fields: &["model", "prompt"], has_model: true },
    EventSpec {
        kind: EventKind::LlmEnd,
        name: "llm_end",
        args: &["response"],
        fields: &["model", "response", "prompt_tokens", "completion_tokens", "total_tokens"],
        has_model: true,
    },
    EventSpec { kind: EventKind::LlmNewToken, name: "llm_new_token", args: &["token"], fields: &["model", "token"], has_model: true },
    EventSpec {
        kind: EventKind::ToolStart,
        name: "tool_start",
        args: &["tool_name", "tool_input"],
        fields: &["tool_name", "tool_input"],
        has_model: false,
    },
    EventSpec {
        kind: EventKind::ToolEnd,
        name: "tool_end",
        args: &["tool_name", "tool_output"],
        fields: &["tool_name", "tool_output"],
        has_model: false,
    },
    EventSpec { kind: EventKind::MemoryStore, name: "memory_store", args: &["content"], fields: &["content"], has_model: false },
    EventSpec {
        kind: EventKind::MemoryRecall,
        name: "memory_recall",
        args: &["query", "results"],
        fields: &["query", "results"],
        has_model: false,
    },
    EventSpec {
        kind: EventKind::Retry,
        name: "retry",
        args: &["attempt", "max_attempts", "error"],
        fields: &["model", "attempt", "max_attempts", "error"],
        has_model: true,
    },
    EventSpec { kind: EventKind::Error, name: "error", args: &["error"], fields: &["model", "error"], has_model: true },
    EventSpec { kind: EventKind::RunStart, name: "run_start", args: &["prompt"], fields: &["model", "prompt"], has_model: true },
    EventSpec { kind: EventKind::RunEnd, name: "run_end", args: &["answer"], fields: &["model", "answer"], has_model: true },
];

impl EventKind {
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn spec(self) -> &'static EventSpec {
        &EVENTS[self as usize]
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EVENTS.iter().find(|spec| spec.name == name).map(|spec| spec.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_kind() {
        for (index, spec) in EVENTS.iter().enumerate() {
            assert_eq!(spec.kind.index(), index);
            assert_eq!(EventKind::from_name(spec.name), Some(spec.kind));
        }
        assert_eq!(EventKind::from_name("nope"), None);
    }

    #[test]
    fn fields_name_args_or_model() {
        for spec in &EVENTS {
            for field in spec.fields {
                let known = spec.args.contains(field)
                    || (*field == "model" && spec.has_model)
                    || spec.kind == EventKind::LlmEnd;
                assert!(known, "{}: field {field} is neither an argument nor model", spec.name);
            }
        }
    }
}
