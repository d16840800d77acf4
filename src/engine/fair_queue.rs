//! The waiting queue, shared fairly between clients.
//!
//! First come, first served lets one client that keeps hundreds of requests queued push every other
//! client's request behind all of them. Here each client has its own FIFO and admissions take turns
//! between clients (round-robin): a light client's request waits for at most one admission per
//! other active client, however deep their queues are. Preempted sequences are not new work: they
//! resume first, before any client's turn.

use super::block_manager::SeqId;
use super::request::ClientId;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
pub struct FairQueue {
    /// Preempted sequences, the most recently preempted first.
    resumed: VecDeque<SeqId>,
    per_client: HashMap<ClientId, VecDeque<SeqId>>,
    /// Clients with queued sequences; the front one is served next.
    turns: VecDeque<ClientId>,
    owner: HashMap<SeqId, ClientId>,
}

impl FairQueue {
    pub fn len(&self) -> usize {
        self.resumed.len() + self.owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// New work from `client`, behind that client's earlier requests.
    pub fn push_back(&mut self, id: SeqId, client: &ClientId) {
        let queue = self.per_client.entry(client.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(client.clone());
        }
        queue.push_back(id);
        self.owner.insert(id, client.clone());
    }

    /// A preempted sequence: ahead of everything.
    pub fn push_front(&mut self, id: SeqId) {
        self.resumed.push_front(id);
    }

    /// The sequence [`Self::pop_front`] would take.
    pub fn front(&self) -> Option<SeqId> {
        if let Some(&id) = self.resumed.front() {
            return Some(id);
        }
        let client = self.turns.front()?;
        self.per_client[client].front().copied()
    }

    /// Takes the next sequence; its client's turn passes to the next client.
    pub fn pop_front(&mut self) -> Option<SeqId> {
        if let Some(id) = self.resumed.pop_front() {
            return Some(id);
        }
        let client = self.turns.pop_front()?;
        let queue = self
            .per_client
            .get_mut(&client)
            .expect("a client with a turn has a queue");
        let id = queue.pop_front().expect("a client with a turn has work");
        if queue.is_empty() {
            self.per_client.remove(&client);
        } else {
            self.turns.push_back(client);
        }
        self.owner.remove(&id);
        Some(id)
    }

    /// Forgets `id` wherever it waits.
    pub fn remove(&mut self, id: SeqId) {
        self.resumed.retain(|&s| s != id);
        let Some(client) = self.owner.remove(&id) else {
            return;
        };
        let queue = self
            .per_client
            .get_mut(&client)
            .expect("an owned sequence's client has a queue");
        queue.retain(|&s| s != id);
        if queue.is_empty() {
            self.per_client.remove(&client);
            self.turns.retain(|c| *c != client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut FairQueue) -> Vec<SeqId> {
        std::iter::from_fn(|| {
            let front = queue.front();
            let popped = queue.pop_front();
            assert_eq!(front, popped);
            popped
        })
        .collect()
    }

    #[test]
    fn clients_take_turns_and_each_keeps_its_order() {
        let (flood, light, third) = (
            ClientId::from("flood"),
            ClientId::from("light"),
            ClientId::from("third"),
        );
        let mut queue = FairQueue::default();
        for id in 0..6 {
            queue.push_back(id, &flood);
        }
        queue.push_back(100, &light);
        queue.push_back(101, &light);
        queue.push_back(200, &third);
        assert_eq!(queue.len(), 9);
        // The flooder queued first, so it is served first, but only once per round.
        assert_eq!(drain(&mut queue), vec![0, 100, 200, 1, 101, 2, 3, 4, 5]);
        assert!(queue.is_empty());
    }

    #[test]
    fn preempted_sequences_resume_first_and_removal_keeps_turns_consistent() {
        let (a, b) = (ClientId::from("a"), ClientId::from("b"));
        let mut queue = FairQueue::default();
        queue.push_back(1, &a);
        queue.push_back(2, &a);
        queue.push_back(3, &b);
        queue.push_front(9);
        queue.push_front(8);
        queue.remove(3); // b has nothing left: it loses its turn
        queue.remove(42); // unknown: nothing happens
        assert_eq!(queue.len(), 4);
        assert_eq!(drain(&mut queue), vec![8, 9, 1, 2]);
        // A client that comes back queues at the back of the turns.
        queue.push_back(4, &a);
        queue.push_back(5, &b);
        queue.push_back(6, &a);
        queue.remove(9);
        assert_eq!(drain(&mut queue), vec![4, 5, 6]);
    }
}
