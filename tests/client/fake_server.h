/* fake_server.h — a small protocol-v1 server for the client tests, built on the dataplane
 * codec: HELLO/INFO, PING/PONG, TOKENIZE and GENERATE streamed as TOKENS + DONE, over UDP or
 * TCP on loopback, with knobs that misbehave on purpose (loss, duplicates, reordering, BUSY,
 * ERROR, stalls, garbage). Generation is a pure function of the prompt: token i of a prompt
 * P has id 1000 + i and text "P#i " (P cut to 16 bytes), so a test can check every token. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum fake_mode {
        FAKE_NORMAL = 0,
        FAKE_BUSY,       /* GENERATE -> terminal ERROR BUSY, retry_after 1234 */
        FAKE_ERROR,      /* GENERATE -> terminal ERROR INTERNAL "model exploded" */
        FAKE_STALL,      /* GENERATE and PING are never answered */
        FAKE_GARBAGE,    /* UDP: junk datagrams and bad CRCs around every frame (stream still
                          * fine); TCP: junk bytes instead of the answer */
        FAKE_BAD_PAYLOAD,/* a TOKENS frame whose text is not UTF-8 (well framed, good CRC) */
};

struct fake_opts {
        bool tcp;
        bool ipv6;
        int mode;                 /* enum fake_mode */
        unsigned n_tokens;        /* tokens per GENERATE when max_tokens is 0 (default 20) */
        unsigned token_delay_ms;  /* UDP: pacing between stream frames */
        unsigned drop_mod;        /* UDP: drop the first sending of frames with seq % drop_mod == 1 */
        bool drop_terminal;       /* UDP: drop the first sending of the terminal frame */
        bool drop_first_request;  /* UDP: ignore the first GENERATE datagram (client retransmits) */
        bool duplicate;           /* UDP: send every frame twice */
        bool reorder;             /* UDP: swap frames pairwise */
        unsigned lease_ms;        /* INFO lease (default 10000) */
};

struct fake_stats {
        atomic_uint hello, ping, generate, tokenize, resend, ack, cancel, bad_in;
        atomic_uint last_prompt_len, frags_max;
};

struct fake_server;
/* Binds 127.0.0.1 or ::1 on an ephemeral port (port 0) or the given one; returns 0 or -errno. */
int fake_server_start(const struct fake_opts *o, uint16_t port, struct fake_server **out);
uint16_t fake_server_port(const struct fake_server *s);
struct fake_stats *fake_server_stats(struct fake_server *s);
void fake_server_stop(struct fake_server *s);
/* Blocks serving until *stop becomes true (for the helper executable). */
void fake_server_wait(struct fake_server *s, atomic_bool *stop);
