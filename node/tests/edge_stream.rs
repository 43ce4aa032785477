//! The node's side of the edge stream over QUIC (docs/edge-stream.md, "Asking a node for
//! the edge stream"), with raw QUIC streams and the reference decoder: `Subscribed` in
//! protobuf, then nothing but edge frames from frame 0 (a keyframe first, deltas after); a
//! `Resume` from seq 0 brings a keyframe and no answer; each price datagram is one
//! self-contained frame 0 with a KEYFRAME; the bytes are counted.

mod common;

use common::serve::{QuicNode, WAIT_MAX, metric};
use gavel_client::{Bid, Client};
use gavel_edge_proto::{AuctionState, Decoded, EdgeDecoder, FRAME_BYTES_LIMIT, frame_len};
use gavel_proto::frame;
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body as Request;
use gavel_proto::pb::server_message::Body as Reply;
use gavel_transport::Limits;
use prost::Message as _;

/// The node writes edge frames of at most this many bytes (docs/edge-stream.md).
const NODE_FRAME_BYTES_MAX: usize = 16 * 1024;

/// One edge stream read by hand: the protobuf answer, then frames.
struct EdgeStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buffer: Vec<u8>,
    decoder: EdgeDecoder,
}

impl EdgeStream {
    /// Opens a stream, subscribes to `test.>` with the edge encoding and reads `Subscribed`.
    async fn open(connection: &quinn::Connection, datagrams: bool) -> EdgeStream {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        let subscribe = pb::ClientMessage {
            request_id: 1,
            body: Some(Request::Subscribe(pb::Subscribe {
                patterns: vec!["test.>".into()],
                datagrams,
                encoding: pb::StreamEncoding::Edge as i32,
                ..pb::Subscribe::default()
            })),
        };
        let mut bytes = Vec::new();
        frame::encode(&subscribe, &mut bytes);
        send.write_all(&bytes).await.unwrap();
        let mut stream = EdgeStream {
            send,
            recv,
            buffer: Vec::new(),
            decoder: EdgeDecoder::new(NODE_FRAME_BYTES_MAX, 100),
        };
        let answer = loop {
            if let Ok(len) = prost::decode_length_delimiter(stream.buffer.as_slice()) {
                let start = prost::length_delimiter_len(len);
                if stream.buffer.len() >= start + len {
                    let answer =
                        pb::ServerMessage::decode(&stream.buffer[start..start + len]).unwrap();
                    stream.buffer.drain(..start + len);
                    break answer;
                }
            }
            stream.read_more().await;
        };
        assert!(
            matches!(answer.body, Some(Reply::Subscribed(_))),
            "{answer:?}"
        );
        stream
    }

    async fn read_more(&mut self) {
        let chunk = tokio::time::timeout(WAIT_MAX, self.recv.read_chunk(64 * 1024, true))
            .await
            .expect("bytes in time")
            .unwrap()
            .expect("the stream is open");
        self.buffer.extend_from_slice(&chunk.bytes);
    }

    /// The states of the next whole frame (every frame must decode: the chain holds).
    async fn next_states(&mut self) -> Vec<AuctionState> {
        loop {
            if let Some(len) = frame_len(&self.buffer, NODE_FRAME_BYTES_MAX).unwrap()
                && self.buffer.len() >= len
            {
                let mut decoded = Vec::new();
                self.decoder
                    .decode_frame(&self.buffer[..len], &mut decoded)
                    .unwrap();
                self.buffer.drain(..len);
                return decoded
                    .into_iter()
                    .map(|d| match d {
                        Decoded::State(state) => state,
                        other => panic!("every record applies: {other:?}"),
                    })
                    .collect();
            }
            self.read_more().await;
        }
    }

    /// Reads frames until auction 5's price is `price`; its state.
    async fn until_price(&mut self, price: u64) -> AuctionState {
        loop {
            if let Some(state) = self
                .next_states()
                .await
                .into_iter()
                .rev()
                .find(|s| s.price == Some(price))
            {
                return state;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_subscription_gets_subscribed_then_only_edge_frames_and_keyframe_datagrams() {
    let node = QuicNode::start(Limits::default()).await;
    node.create_english(5);
    let bytes_before = metric("gavel_stream_edge_bytes_total{transport=\"quic\"}");
    let device = node.raw_connection("device", "device-1").await;
    let mut stream = EdgeStream::open(&device.connection, false).await;
    let first = stream.next_states().await;
    assert_eq!(
        first.len(),
        1,
        "a keyframe of the one matching auction: {first:?}"
    );
    assert_eq!((first[0].auction_id, first[0].seq), (5, node.view(5).seq));
    assert_eq!(&*first[0].topic, "test.lot-5");

    let bidder = Client::connect(node.client_config("bidder", "bidder-1"))
        .await
        .unwrap();
    for n in 1..=10 {
        bidder.place_bid(Bid::new(5, 100 + 5 * n)).await.unwrap();
    }
    let last = stream.until_price(150).await;
    assert_eq!(last.seq, node.view(5).seq);
    assert_eq!(last.leader.as_deref(), Some("bidder-1"));

    // A keyframe of one auction: Resume from seq 0. No protobuf answer comes on the
    // stream (the next bytes are a frame: its version byte parses), only the keyframe.
    let resume = pb::ClientMessage {
        request_id: 2,
        body: Some(Request::Resume(pb::Resume {
            positions: vec![pb::StreamPosition {
                auction_id: 5,
                epoch: last.epoch,
                seq: 0,
            }],
        })),
    };
    let mut bytes = Vec::new();
    frame::encode(&resume, &mut bytes);
    stream.send.write_all(&bytes).await.unwrap();
    let keyframe = stream.next_states().await;
    assert_eq!(
        keyframe,
        vec![last.clone()],
        "the snapshot, as a keyframe of the same state"
    );

    // Datagrams: each one frame 0 with a KEYFRAME, read by a fresh decoder.
    let _ticks = EdgeStream::open(&device.connection, true).await;
    bidder.place_bid(Bid::new(5, 155)).await.unwrap();
    let datagram = tokio::time::timeout(WAIT_MAX, device.connection.read_datagram())
        .await
        .expect("a datagram in time")
        .unwrap();
    assert_eq!(&datagram[1..3], &[0, 0], "frame number 0");
    let mut decoded = Vec::new();
    EdgeDecoder::new(FRAME_BYTES_LIMIT, 1)
        .decode_frame(&datagram, &mut decoded)
        .unwrap();
    let [Decoded::State(tick)] = decoded.as_slice() else {
        panic!("one state: {decoded:?}")
    };
    assert_eq!((tick.price, tick.seq), (Some(155), node.view(5).seq));
    assert!(metric("gavel_stream_edge_bytes_total{transport=\"quic\"}") > bytes_before);
    node.gateway.shutdown().cancel();
}
