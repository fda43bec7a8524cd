//! Model-based property test: random operation sequences on a `MemoryMessageQueue` (on a
//! paused Tokio clock) and on a plain reference model must agree after every step.

use std::collections::VecDeque;
use std::time::Duration;

use courier_core::{MemoryMessageQueue, MessageEnvelope, MessageQueue, QueueOptions};
use proptest::prelude::*;

const LOCK_MS: u64 = 100;

#[derive(Clone, Debug)]
enum Op {
    Send,
    Receive,
    Complete(usize),
    Abandon(usize),
    DeadLetter(usize),
    Renew(usize, u64),
    Advance(u64),
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        4 => Just(Op::Receive),
        2 => any::<usize>().prop_map(Op::Complete),
        2 => any::<usize>().prop_map(Op::Abandon),
        1 => any::<usize>().prop_map(Op::DeadLetter),
        1 => (any::<usize>(), 1..300u64).prop_map(|(i, ms)| Op::Renew(i, ms)),
        2 => (1..250u64).prop_map(Op::Advance),
        1 => Just(Op::Clear),
    ]
}

/// One delivery handed out by receive, as the model sees it.
#[derive(Debug)]
struct Held {
    id: u32,
    token: u64,
    deadline: u64,
    deliveries: u32,
    live: bool,
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    ready: VecDeque<(u32, u32)>, // (id, deliveries so far)
    held: Vec<Held>,
    dead: Vec<u32>,
    next_token: u64,
    max_deliveries: Option<u32>,
}

impl Model {
    fn release(&mut self, i: usize) {
        let h = &mut self.held[i];
        h.live = false;
        if self.max_deliveries.is_some_and(|m| h.deliveries >= m) {
            self.dead.push(h.id);
        } else {
            self.ready.push_back((h.id, h.deliveries));
        }
    }

    fn expire(&mut self) {
        let mut due: Vec<usize> = (0..self.held.len())
            .filter(|&i| self.held[i].live && self.held[i].deadline <= self.now)
            .collect();
        due.sort_by_key(|&i| (self.held[i].deadline, self.held[i].token));
        for i in due {
            self.release(i);
        }
    }

    fn receive(&mut self) -> Option<(u32, u32)> {
        self.expire();
        let (id, deliveries) = self.ready.pop_front()?;
        self.held.push(Held {
            id,
            token: self.next_token,
            deadline: self.now + LOCK_MS,
            deliveries: deliveries + 1,
            live: true,
        });
        self.next_token += 1;
        Some((id, deliveries + 1))
    }

    fn live(&mut self, i: usize) -> bool {
        self.expire();
        self.held[i].live
    }
}

fn run(ops: Vec<Op>, max_deliveries: Option<u32>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut options = QueueOptions::default();
        options.lock_timeout = Duration::from_millis(LOCK_MS);
        options.max_deliveries = max_deliveries;
        let queue = MemoryMessageQueue::with_options("model", options);
        queue.open(None).await.expect("open");
        let mut model = Model {
            max_deliveries,
            ..Model::default()
        };
        let mut envelopes: Vec<MessageEnvelope> = Vec::new();
        let mut next_id = 0u32;
        for op in ops {
            match op {
                Op::Send => {
                    queue
                        .send(None, MessageEnvelope::new(None, "m", next_id.to_string()))
                        .await
                        .expect("send");
                    model.ready.push_back((next_id, 0));
                    next_id += 1;
                }
                Op::Receive => {
                    let got = queue.receive(None, Duration::ZERO).await.expect("receive");
                    let expected = model.receive();
                    let got_id = got.as_ref().map(|m| {
                        (
                            m.message_as_string().unwrap().parse::<u32>().unwrap(),
                            m.delivery_count(),
                        )
                    });
                    prop_assert_eq!(got_id, expected);
                    if let Some(m) = got {
                        envelopes.push(m);
                    }
                }
                Op::Complete(i) | Op::Abandon(i) | Op::DeadLetter(i) | Op::Renew(i, _)
                    if !envelopes.is_empty() =>
                {
                    let i = i % envelopes.len();
                    let live = model.live(i);
                    let envelope = &envelopes[i];
                    match op {
                        Op::Complete(_) => {
                            queue.complete(envelope).await.expect("complete");
                            model.held[i].live = false;
                        }
                        Op::Abandon(_) => {
                            queue.abandon(envelope).await.expect("abandon");
                            if live {
                                model.release(i);
                            }
                        }
                        Op::DeadLetter(_) => {
                            queue
                                .move_to_dead_letter(envelope)
                                .await
                                .expect("dead letter");
                            if live {
                                model.held[i].live = false;
                                model.dead.push(model.held[i].id);
                            }
                        }
                        Op::Renew(_, ms) => {
                            queue
                                .renew_lock(envelope, Duration::from_millis(ms))
                                .await
                                .expect("renew");
                            if live {
                                model.held[i].deadline = model.now + ms;
                            }
                        }
                        _ => unreachable!(),
                    }
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    model.now += ms;
                }
                Op::Clear => {
                    queue.clear(None).await.expect("clear");
                    model.expire();
                    model.ready.clear();
                }
                _ => {}
            }
            // After every step the visible state agrees.
            let peeked: Vec<u32> = queue
                .peek_batch(None, usize::MAX)
                .await
                .expect("peek_batch")
                .iter()
                .map(|m| m.message_as_string().unwrap().parse().unwrap())
                .collect();
            model.expire();
            let expected: Vec<u32> = model.ready.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(peeked, expected);
            prop_assert_eq!(
                queue.read_message_count().await.expect("count"),
                model.ready.len()
            );
            prop_assert_eq!(
                queue.locked_count(),
                model.held.iter().filter(|h| h.live).count()
            );
            let dead: Vec<u32> = queue
                .dead_letter_queue()
                .peek_batch(None, usize::MAX)
                .await
                .expect("dlq")
                .iter()
                .map(|m| m.message_as_string().unwrap().parse().unwrap())
                .collect();
            prop_assert_eq!(dead, model.dead.clone());
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_queue_matches_model(
        ops in prop::collection::vec(op(), 1..80),
        max_deliveries in prop::option::of(1..4u32),
    ) {
        run(ops, max_deliveries)?;
    }
}
