//! Exact topics the operator subscribed to, each with what it is about (a device, a kind of
//! message), found again in whatever form the broker delivers them: RabbitMQ's MQTT plugin
//! (3.x) turns every `.` of a topic into `/` (see `lethe_agent::mqtt::topic_is`), so a
//! device or command id with a dot cannot be read back by splitting the topic.

use std::collections::HashMap;

/// Topics and what they are about.
#[derive(Debug, Clone)]
pub struct TopicIndex<T> {
    map: HashMap<String, T>,
    topics: Vec<String>,
}

impl<T: Clone> Default for TopicIndex<T> {
    fn default() -> Self {
        TopicIndex {
            map: HashMap::new(),
            topics: Vec::new(),
        }
    }
}

impl<T: Clone> TopicIndex<T> {
    /// Adds `topic` (as published) about `what`.
    pub fn insert(&mut self, topic: String, what: T) {
        if topic.contains('.') {
            self.map.insert(topic.replace('.', "/"), what.clone());
        }
        self.map.insert(topic.clone(), what);
        self.topics.push(topic);
    }

    /// What the topic a message was delivered on is about.
    pub fn get(&self, delivered: &str) -> Option<&T> {
        self.map.get(delivered)
    }

    /// The topics to subscribe to, as published, in insertion order.
    pub fn filters(&self) -> Vec<String> {
        self.topics.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dotted_topic_is_found_in_the_form_rabbitmq_delivers_it() {
        let mut ix = TopicIndex::default();
        ix.insert("lethe/v1/lab/cam.01/status".to_string(), "cam.01");
        ix.insert("lethe/v1/lab/cam-02/status".to_string(), "cam-02");
        assert_eq!(ix.get("lethe/v1/lab/cam.01/status"), Some(&"cam.01"));
        assert_eq!(ix.get("lethe/v1/lab/cam/01/status"), Some(&"cam.01"));
        assert_eq!(ix.get("lethe/v1/lab/cam-02/status"), Some(&"cam-02"));
        assert_eq!(ix.get("lethe/v1/lab/cam/02/status"), None);
        assert_eq!(
            ix.filters(),
            ["lethe/v1/lab/cam.01/status", "lethe/v1/lab/cam-02/status"]
        );
    }
}
