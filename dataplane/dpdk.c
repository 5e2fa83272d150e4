/* dpdk.c — the DPDK transport: EAL, one port, one rx/tx queue pair per dataplane lcore (RSS
 * spreads clients), a poll loop per lcore in bursts of 32 that answers ARP and ICMP echo,
 * validates IPv4/UDP (packet.c) and runs the UDP protocol core (udpcore.c) on what is left.
 * Receive buffers are external memory registered with DPDK (rte_extmem_register +
 * rte_dev_dma_map) and pinned (mlock, or the engine's CUDA registration), so a
 * single-datagram request goes to the engine as a record that points into its mbuf. Per
 * lcore state is cache-aligned; the loop takes no lock, allocates nothing but mbufs, and
 * makes no syscall per packet. docs/dpdk.md. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_memory.h>
#include <rte_mempool.h>

#include "dataplane.h"
#include "packet.h"
#include "transport.h"
#include "udpcore.h"

#define BURST 32
#define TICK_NS 5000000ull
#define ELT 2304u                          /* bytes per buffer in the external area (36 x 64) */
#define DATA_ROOM (ELT - 64u)              /* headroom + 2112 bytes: any 1514-byte frame, and the
                                            * 2016 bytes net_af_packet's default frames need */
#define IP_ALIGN 2u                        /* buffers start 2 bytes into a line: the IPv4
                                            * header and all after it are 4-byte aligned */
#define IDLE_POLLS 256u
#define MAX_EAL_ARGS 64

_Static_assert((int)DP_DPDK_DROP_SPLIT == DPK_DROP_SPLIT - DPK_DROP_SHORT, "drop reasons follow dpk_kind");

/* ---- per lcore ---- */

struct lq_stats {
        uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes;
        uint64_t drops[DP_DPDK_DROP_N];
        uint64_t arp_requests_rx, arp_replies_rx, arp_replies_tx, arp_requests_tx;
        uint64_t icmp_echo;
        uint64_t prompts_zero_copy, prompts_copied;
        uint64_t polls, idle_polls;
};

struct lcore_q {
        _Alignas(64) struct dp_dpdk *d;
        unsigned q;                         /* queue index (= ring pair) */
        unsigned lcore;
        struct dpu core;
        struct dpk_arp_cache arp;
        struct rte_mbuf *cur;               /* the frame being handled (zero-copy push) */
        struct rte_mbuf *tx[BURST];
        unsigned n_tx;
        uint16_t ip_id;
        uint64_t next_tick;
        struct lq_stats st;
        _Alignas(64) _Atomic int64_t held;  /* mbufs lent to the engine (the engine returns them) */
};

struct dp_dpdk {
        struct dp_dpdk_config cfg;
        uint16_t port;
        char port_name[RTE_ETH_NAME_MAX_LEN];
        char driver[64];
        struct dpk_iface ifc;
        unsigned txf;                       /* enum dpk_tx_flag: what the port offloads */
        uint64_t rx_off, tx_off;
        bool rss;
        bool started_port, launched;
        _Atomic bool stop;

        uint8_t *area;                      /* the external buffer memory */
        size_t area_len, page;
        bool locked, host_registered, dpdk_registered, dma_mapped;
        int dma_map_rc;
        void *area_dev;                     /* its GPU address (host_registered) */
        struct rte_mempool *pool;
        struct rte_mempool *payload_pool;   /* gpudirect: the payload segments */
        void *dev_area;                     /* gpudirect: CPU address of the GPU payload area */
        size_t dev_area_len;
        int64_t held_max;

        struct lcore_q *lq;                 /* n_queues */
};

static struct dp_dpdk *g_live; /* EAL is one per process, and so is this transport */
static bool g_eal_up;

const char *dp_dpdk_drop_name(unsigned r)
{
        if (r < DPK_DROP_SPLIT - DPK_DROP_SHORT + 1)
                return dpk_kind_name((enum dpk_kind)(r + DPK_DROP_SHORT));
        switch (r) {
        case DP_DPDK_DROP_SEGMENTS: return "segments";
        case DP_DPDK_DROP_TX_FULL: return "tx_full";
        case DP_DPDK_DROP_NO_ARP: return "no_arp";
        case DP_DPDK_DROP_NO_MBUF: return "no_mbuf";
        default: return "?";
        }
}

#define LQ_STAT(q, f, n) __atomic_store_n(&(q)->st.f, __atomic_load_n(&(q)->st.f, __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)

/* ---- transmit ---- */

static void tx_flush(struct lcore_q *q)
{
        if (!q->n_tx)
                return;
        uint16_t sent = rte_eth_tx_burst(q->d->port, (uint16_t)q->q, q->tx, (uint16_t)q->n_tx);
        for (unsigned i = sent; i < q->n_tx; i++)
                rte_pktmbuf_free(q->tx[i]);
        if (sent < q->n_tx)
                LQ_STAT(q, drops[DP_DPDK_DROP_TX_FULL], q->n_tx - sent);
        q->n_tx = 0;
}

static void tx_frame(struct lcore_q *q, struct rte_mbuf *m, size_t len)
{
        m->data_len = (uint16_t)len;
        m->pkt_len = (uint32_t)len;
        LQ_STAT(q, tx_packets, 1);
        LQ_STAT(q, tx_bytes, len);
        q->tx[q->n_tx++] = m;
        if (q->n_tx == BURST)
                tx_flush(q);
}

static void send_arp_request(struct lcore_q *q, uint32_t ip)
{
        struct rte_mbuf *m = rte_pktmbuf_alloc(q->d->pool);
        if (!m) {
                LQ_STAT(q, drops[DP_DPDK_DROP_NO_MBUF], 1);
                return;
        }
        m->ol_flags = 0;
        size_t n = dpk_arp_request(rte_pktmbuf_mtod(m, uint8_t *), &q->d->ifc, ip);
        LQ_STAT(q, arp_requests_tx, 1);
        tx_frame(q, m, n);
}

/* ---- the protocol core's I/O ---- */

static void *io_tx_get(void *ctx, uint8_t **buf)
{
        struct lcore_q *q = ctx;
        struct rte_mbuf *m = rte_pktmbuf_alloc(q->d->pool);
        if (!m) {
                LQ_STAT(q, drops[DP_DPDK_DROP_NO_MBUF], 1);
                return NULL;
        }
        *buf = rte_pktmbuf_mtod(m, uint8_t *) + DPK_HDRS;
        return m;
}

static void io_tx_put(void *ctx, void *tx)
{
        (void)ctx;
        rte_pktmbuf_free(tx);
}

static void io_tx_send(void *ctx, void *tx, const struct dpu_peer *p, size_t len)
{
        struct lcore_q *q = ctx;
        struct rte_mbuf *m = tx;
        const struct sockaddr_in *sin = (const void *)&p->ss;
        uint32_t ip = ntohl(sin->sin_addr.s_addr);
        uint64_t now = sl_now_ns();
        const uint8_t *mac = dpk_arp_lookup(&q->arp, ip, now);
        if (!mac) {
                /* the entry aged out between request and reply: ask, and let the client's
                 * RESEND (or next ACK) bring the frame again */
                rte_pktmbuf_free(m);
                LQ_STAT(q, drops[DP_DPDK_DROP_NO_ARP], 1);
                if ((ip & q->d->ifc.mask) == (q->d->ifc.ip & q->d->ifc.mask))
                        send_arp_request(q, ip);
                return;
        }
        size_t n = dpk_udp_headers(rte_pktmbuf_mtod(m, uint8_t *), &q->d->ifc, mac, ip, ntohs(sin->sin_port), len,
                                   q->ip_id++, q->d->txf);
        m->ol_flags = 0;
        if (q->d->txf) {
                m->l2_len = DPK_ETH_LEN;
                m->l3_len = DPK_IP_LEN;
                m->ol_flags = RTE_MBUF_F_TX_IPV4;
                if (q->d->txf & DPK_TXF_IP_OFFLOAD)
                        m->ol_flags |= RTE_MBUF_F_TX_IP_CKSUM;
                if (q->d->txf & DPK_TXF_UDP_OFFLOAD)
                        m->ol_flags |= RTE_MBUF_F_TX_UDP_CKSUM;
        }
        tx_frame(q, m, n);
}

static void release_mbuf(void *ctx, void *ref)
{
        struct lcore_q *q = ctx;
        rte_pktmbuf_free(ref); /* the engine's reference; mempool puts are thread-safe */
        atomic_fetch_sub_explicit(&q->held, 1, memory_order_relaxed);
}

static bool in_mbuf(const struct rte_mbuf *m, const uint8_t *p, size_t len)
{
        for (; m; m = m->next) {
                const uint8_t *b = m->buf_addr;
                if (p >= b && p + len <= b + m->buf_len)
                        return true;
        }
        return false;
}

/* A complete request: inside the frame being handled, it goes to the engine where it lies
 * (the record holds the address and a reference on the mbuf); a reassembled one, or any
 * while the engine holds too many buffers, is copied into the ring. */
static int io_push(void *ctx, const struct dp_req_rec *h, const uint8_t *msg, size_t len, const struct dpu_peer *p)
{
        struct lcore_q *q = ctx;
        struct dp_ring *ring = q->d->cfg.req_ring[q->q];
        struct rte_mbuf *m = q->cur;
        if (m && in_mbuf(m, msg, len) &&
            atomic_load_explicit(&q->held, memory_order_relaxed) < q->d->held_max) {
                struct dp_req_rec r = *h;
                struct dp_req_ext e = {.data = msg, .len = (uint32_t)len, .release = release_mbuf, .ctx = q, .ref = m};
                r.flags |= DP_REQF_EXTERNAL;
                rte_mbuf_refcnt_update(m, 1);
                atomic_fetch_add_explicit(&q->held, 1, memory_order_relaxed);
                if (dp_req_push_peer(ring, &r, &e, sizeof(e), (const struct sockaddr *)&p->ss, p->len) < 0) {
                        atomic_fetch_sub_explicit(&q->held, 1, memory_order_relaxed);
                        rte_mbuf_refcnt_update(m, -1);
                        return -ENOBUFS;
                }
                LQ_STAT(q, prompts_zero_copy, 1);
                return 0;
        }
        int r = dp_req_push_peer(ring, h, msg, len, (const struct sockaddr *)&p->ss, p->len);
        if (r == 0)
                LQ_STAT(q, prompts_copied, 1);
        return r;
}

/* ---- receive ---- */

static unsigned rx_flags(const struct rte_mbuf *m)
{
        unsigned f = 0;
        uint64_t ip = m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK, l4 = m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK;
        if (ip == RTE_MBUF_F_RX_IP_CKSUM_GOOD)
                f |= DPK_RXF_IP_GOOD;
        else if (ip == RTE_MBUF_F_RX_IP_CKSUM_BAD)
                f |= DPK_RXF_IP_BAD;
        if (l4 == RTE_MBUF_F_RX_L4_CKSUM_GOOD)
                f |= DPK_RXF_L4_GOOD;
        else if (l4 == RTE_MBUF_F_RX_L4_CKSUM_BAD)
                f |= DPK_RXF_L4_BAD;
        return f;
}

static void rx_one(struct lcore_q *q, struct rte_mbuf *m, uint64_t now)
{
        struct dp_dpdk *d = q->d;
        struct dpk_pkt p;
        const uint8_t *tail = NULL;
        size_t tail_len = 0;
        enum dpk_kind k;

        LQ_STAT(q, rx_packets, 1);
        LQ_STAT(q, rx_bytes, m->pkt_len);
        if (m->nb_segs > 1) {
                /* header/data split: headers in the first segment, the datagram in the second */
                if (!d->payload_pool || m->nb_segs != 2) {
                        LQ_STAT(q, drops[DP_DPDK_DROP_SEGMENTS], 1);
                        rte_pktmbuf_free(m);
                        return;
                }
                tail = rte_pktmbuf_mtod(m->next, const uint8_t *);
                tail_len = m->next->data_len;
        }
        uint8_t *f = rte_pktmbuf_mtod(m, uint8_t *);
        k = dpk_parse(f, m->data_len, tail, tail_len, &d->ifc, rx_flags(m), &p);
        switch (k) {
        case DPK_UDP: {
                struct dpu_peer peer = {.len = sizeof(struct sockaddr_in), .sock = (uint8_t)q->q};
                struct sockaddr_in *sin = (struct sockaddr_in *)&peer.ss;
                sin->sin_family = AF_INET;
                sin->sin_addr.s_addr = htonl(p.src_ip);
                sin->sin_port = htons(p.src_port);
                dpk_arp_learn(&q->arp, p.src_ip, p.src_mac, now); /* the next hop back to this client */
                q->cur = m;
                dpu_on_datagram(&q->core, &peer, p.payload, p.payload_len, now);
                q->cur = NULL;
                rte_pktmbuf_free(m); /* a zero-copy request holds its own reference */
                return;
        }
        case DPK_ARP:
                if (p.arp_op == 2) {
                        LQ_STAT(q, arp_replies_rx, 1);
                        if (p.arp_for_us)
                                dpk_arp_learn(&q->arp, p.src_ip, p.src_mac, now);
                        break;
                }
                LQ_STAT(q, arp_requests_rx, 1);
                if (!p.arp_for_us)
                        break;
                dpk_arp_learn(&q->arp, p.src_ip, p.src_mac, now);
                m->ol_flags = 0;
                LQ_STAT(q, arp_replies_tx, 1);
                tx_frame(q, m, dpk_arp_reply(f, &d->ifc, p.src_mac, p.src_ip)); /* in place */
                return;
        case DPK_ICMP_ECHO:
                LQ_STAT(q, icmp_echo, 1);
                m->ol_flags = 0;
                tx_frame(q, m, dpk_icmp_echo_reply(f, &p, &d->ifc));
                return;
        default:
                LQ_STAT(q, drops[k - DPK_DROP_SHORT], 1);
                break;
        }
        rte_pktmbuf_free(m);
}

static void idle_sleep(unsigned us)
{
        struct timespec ts = {0, (long)us * 1000};
        nanosleep(&ts, NULL);
}

static int lcore_main(void *arg)
{
        struct lcore_q *q = arg;
        struct dp_dpdk *d = q->d;
        struct rte_mbuf *pkts[BURST];
        unsigned idle = 0;

        while (!atomic_load_explicit(&d->stop, memory_order_relaxed)) {
                uint16_t n = rte_eth_rx_burst(d->port, (uint16_t)q->q, pkts, BURST);
                uint64_t now = sl_now_ns();
                for (uint16_t i = 0; i < n; i++)
                        rx_one(q, pkts[i], now);
                unsigned out = dpu_drain_responses(&q->core, now);
                if (now >= q->next_tick) {
                        dpu_tick(&q->core, now);
                        q->next_tick = now + TICK_NS;
                }
                tx_flush(q);
                if (q->core.pushed && d->cfg.tc.engine_wake) {
                        dp_notify_kick(d->cfg.tc.engine_wake);
                        q->core.pushed = false;
                }
                dpt_auth_idle(&q->core.auth); /* between bursts it holds no keys */
                LQ_STAT(q, polls, 1);
                if (n || out) {
                        idle = 0;
                        continue;
                }
                LQ_STAT(q, idle_polls, 1);
                if (d->cfg.idle_sleep_us && ++idle >= IDLE_POLLS)
                        idle_sleep(d->cfg.idle_sleep_us);
        }
        tx_flush(q);
        return 0;
}

/* ---- EAL ---- */

static bool looks_pci(const char *s)
{
        unsigned a, b, c, e;
        char t;
        return sscanf(s, "%x:%x:%x.%x%c", &a, &b, &c, &e, &t) == 4 || sscanf(s, "%x:%x.%x%c", &a, &b, &c, &t) == 3;
}

static bool all_digits(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!isdigit((unsigned char)*s))
                        return false;
        return true;
}

static bool has_arg(char *const *argv, int argc, const char *const *names)
{
        for (int i = 0; i < argc; i++)
                for (const char *const *n = names; *n; n++)
                        if (!strncmp(argv[i], *n, strlen(*n)))
                                return true;
        return false;
}

static uint64_t hugepages_free(void)
{
        FILE *f = fopen("/proc/meminfo", "r");
        char line[128];
        unsigned long long v = 0;
        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "HugePages_Free: %llu", &v) == 1)
                        break;
        fclose(f);
        return v;
}

static int eal_start(const struct dp_dpdk_config *c, struct sl_error *err)
{
        static char buf[1024];
        char *argv[MAX_EAL_ARGS + 12];
        static char lbuf[32], vbuf[300];
        int argc = 0;
        cpu_set_t saved;

        if (g_eal_up)
                return sl_errorf(err, -EALREADY, "dpdk: EAL is already running in this process");
        snprintf(buf, sizeof(buf), "%s", c->eal_args ? c->eal_args : "");
        argv[argc++] = (char *)"sluiced";
        for (char *save, *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
                if (argc == MAX_EAL_ARGS)
                        return sl_errorf(err, -E2BIG, "dpdk: more than %d EAL arguments", MAX_EAL_ARGS - 1);
                argv[argc++] = t;
        }
        static const char *const lc[] = {"-l", "-c", "--lcores", NULL}, *const mem[] = {"--in-memory", "--file-prefix", "--no-shconf", NULL},
                                 *const tel[] = {"--telemetry", "--no-telemetry", NULL}, *const ll[] = {"--log-level", NULL},
                                 *const nohuge[] = {"--no-huge", NULL};
        if (!has_arg(argv, argc, lc)) {
                snprintf(lbuf, sizeof(lbuf), "0-%u", c->n_queues);
                argv[argc++] = (char *)"-l";
                argv[argc++] = lbuf;
        }
        /* one process, no files under /var/run/dpdk shared with others (--no-huge is
         * legacy memory, which --in-memory refuses: --no-shconf then) */
        bool no_huge = has_arg(argv, argc, nohuge);
        if (!has_arg(argv, argc, mem))
                argv[argc++] = no_huge ? (char *)"--no-shconf" : (char *)"--in-memory";
        if (!has_arg(argv, argc, tel))
                argv[argc++] = (char *)"--no-telemetry";
        if (!has_arg(argv, argc, ll))
                argv[argc++] = (char *)"--log-level=*:notice";
        if (looks_pci(c->port)) {
                argv[argc++] = (char *)"-a";
                argv[argc++] = (char *)c->port;
        } else if (!all_digits(c->port)) {
                snprintf(vbuf, sizeof(vbuf), "--vdev=%s", c->port);
                argv[argc++] = vbuf;
        }
        argv[argc] = NULL;

        /* EAL pins the calling thread to the main lcore; the daemon's main thread (and what
         * it starts later) keeps the CPUs it had */
        bool aff = pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) == 0;
        int r = rte_eal_init(argc, argv);
        int e = rte_errno;
        if (aff)
                pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
        if (r >= 0) {
                g_eal_up = true;
                return 0;
        }
        if (e == EACCES || e == EPERM)
                return sl_errorf(err, -EACCES,
                                 "dpdk: EAL cannot start: %s. Run sluiced as root, or give it CAP_SYS_ADMIN, "
                                 "CAP_IPC_LOCK and CAP_NET_RAW (AmbientCapabilities=) and access to /dev/vfio and "
                                 "/dev/hugepages", rte_strerror(e));
        if (!no_huge && hugepages_free() == 0)
                return sl_errorf(err, -ENOMEM,
                                 "dpdk: EAL cannot start (%s): no free hugepages. Reserve some with "
                                 "'dpdk-hugepages.py --setup 2G' (or sysctl vm.nr_hugepages), or for a test "
                                 "without them add '--no-huge -m 512' to [dpdk] eal_args", rte_strerror(e));
        return sl_errorf(err, -(e ? e : EINVAL),
                         "dpdk: EAL cannot start: %s (check [dpdk] eal_args; EAL's own messages above say more)",
                         rte_strerror(e));
}

static int find_port(struct dp_dpdk *d, struct sl_error *err)
{
        const char *p = d->cfg.port;
        if (all_digits(p)) {
                unsigned long id = strtoul(p, NULL, 10);
                if (id >= RTE_MAX_ETHPORTS || !rte_eth_dev_is_valid_port((uint16_t)id))
                        return sl_errorf(err, -ENODEV, "dpdk: no port %lu (EAL found %u)", id, rte_eth_dev_count_avail());
                d->port = (uint16_t)id;
                return 0;
        }
        char name[RTE_ETH_NAME_MAX_LEN];
        size_t n = strcspn(p, ",");
        snprintf(name, sizeof(name), "%.*s", (int)SL_MIN(n, sizeof(name) - 1), p);
        uint16_t id;
        if (rte_eth_dev_get_port_by_name(name, &id) == 0) {
                d->port = id;
                return 0;
        }
        if (looks_pci(p))
                return sl_errorf(err, -ENODEV,
                                 "dpdk: PCI device %s has no DPDK port: bind it to a DPDK driver with "
                                 "'dpdk-devbind.py --bind=vfio-pci %s' (see 'dpdk-devbind.py --status')", p, p);
        return sl_errorf(err, -ENODEV,
                         "dpdk: the virtual device '%s' did not start (net_af_packet: does the interface exist "
                         "and is it up? EAL's messages above say more)", name);
}

/* ---- memory ---- */

static int memory_setup(struct dp_dpdk *d, const struct rte_eth_dev_info *di, struct sl_error *err)
{
        const struct dp_host_mem_ops *mo = d->cfg.mem;
        unsigned n = d->cfg.mbufs;
        int r;

        if (rte_eal_iova_mode() != RTE_IOVA_VA)
                return sl_errorf(err, -ENOTSUP,
                                 "dpdk: the receive memory needs IOVA as VA: add --iova-mode=va to [dpdk] eal_args "
                                 "(vfio-pci with an IOMMU)");
        d->page = (size_t)sysconf(_SC_PAGESIZE);
        d->area_len = SL_ALIGN_UP(IP_ALIGN + (size_t)n * ELT, d->page);
        d->area = mmap(NULL, d->area_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (d->area == MAP_FAILED) {
                d->area = NULL;
                return sl_errorf(err, -ENOMEM, "dpdk: mmap of %zu bytes: %s", d->area_len, strerror(errno));
        }
        if (mo && mo->register_host) {
                r = mo->register_host(mo->user, d->area, d->area_len, &d->area_dev);
                if (r < 0)
                        return sl_errorf(err, r, "dpdk: %s host registration of %zu bytes failed: %s",
                                         mo->name ? mo->name : "engine", d->area_len, strerror(-r));
                d->host_registered = true;
        } else {
                if (mlock(d->area, d->area_len) < 0)
                        return sl_errorf(err, -errno,
                                         "dpdk: mlock of %zu bytes of receive memory: %s (raise LimitMEMLOCK=)",
                                         d->area_len, strerror(errno));
                d->locked = true;
        }
        if (rte_extmem_register(d->area, d->area_len, NULL, 0, d->page) < 0)
                return sl_errorf(err, -rte_errno, "dpdk: rte_extmem_register: %s", rte_strerror(rte_errno));
        d->dpdk_registered = true;
        /* virtual devices map nothing (0 or -ENOTSUP); a NIC gets the area in its IOMMU domain */
        d->dma_map_rc = rte_dev_dma_map(di->device, d->area, (rte_iova_t)(uintptr_t)d->area, d->area_len);
        if (d->dma_map_rc == 0)
                d->dma_mapped = true;
        else if (rte_errno != ENOTSUP)
                return sl_errorf(err, -rte_errno, "dpdk: rte_dev_dma_map of the receive memory: %s",
                                 rte_strerror(rte_errno));
        struct rte_pktmbuf_extmem em = {
                .buf_ptr = d->area + IP_ALIGN, .buf_iova = (rte_iova_t)(uintptr_t)(d->area + IP_ALIGN),
                .buf_len = d->area_len - IP_ALIGN, .elt_size = ELT,
        };
        char name[RTE_MEMPOOL_NAMESIZE];
        snprintf(name, sizeof(name), "sluice_rx%u", d->port);
        unsigned cache = SL_MIN(256u, n / (2 * d->cfg.n_queues + 2));
        d->pool = rte_pktmbuf_pool_create_extbuf(name, n, cache, 0, DATA_ROOM, (int)rte_socket_id(), &em, 1);
        if (!d->pool)
                return sl_errorf(err, -rte_errno, "dpdk: mbuf pool of %u buffers on external memory: %s", n,
                                 rte_strerror(rte_errno));
        d->held_max = (int64_t)(n / (4 * d->cfg.n_queues));
        if (!d->cfg.gpudirect)
                return 0;

        /* GPUDirect: payload segments straight into GPU memory that the CPU can read */
        if (!(di->rx_offload_capa & RTE_ETH_RX_OFFLOAD_BUFFER_SPLIT) || di->rx_seg_capa.max_nseg < 2 ||
            !di->rx_seg_capa.multi_pools)
                return sl_errorf(err, -ENOTSUP,
                                 "dpdk: gpudirect needs header/data split (rte_eth_rxseg_split) and %s (%s) has none: "
                                 "use a NIC that has it (e.g. mlx5), or set gpudirect = off", d->port_name, d->driver);
        if (!mo || !mo->alloc_device)
                return sl_errorf(err, -ENOTSUP,
                                 "dpdk: gpudirect needs GPU memory that the NIC can write and the CPU can read, and "
                                 "the engine of this build offers none (dp_host_mem_ops.alloc_device)");
        d->dev_area_len = SL_ALIGN_UP(IP_ALIGN + (size_t)n * ELT, d->page);
        void *dev = NULL;
        if ((r = mo->alloc_device(mo->user, d->dev_area_len, &d->dev_area, &dev)) < 0)
                return sl_errorf(err, r, "dpdk: %zu bytes of GPU memory: %s", d->dev_area_len, strerror(-r));
        if (rte_extmem_register(d->dev_area, d->dev_area_len, NULL, 0, d->page) < 0 ||
            (rte_dev_dma_map(di->device, d->dev_area, (rte_iova_t)(uintptr_t)d->dev_area, d->dev_area_len) < 0 &&
             rte_errno != ENOTSUP))
                return sl_errorf(err, -rte_errno, "dpdk: registering the GPU payload memory: %s", rte_strerror(rte_errno));
        struct rte_pktmbuf_extmem pm = {
                .buf_ptr = d->dev_area, .buf_iova = (rte_iova_t)(uintptr_t)d->dev_area,
                .buf_len = d->dev_area_len, .elt_size = ELT,
        };
        snprintf(name, sizeof(name), "sluice_pl%u", d->port);
        d->payload_pool = rte_pktmbuf_pool_create_extbuf(name, n, cache, 0, DATA_ROOM, (int)rte_socket_id(), &pm, 1);
        if (!d->payload_pool)
                return sl_errorf(err, -rte_errno, "dpdk: payload pool: %s", rte_strerror(rte_errno));
        return 0;
}

/* ---- port ---- */

static int port_setup(struct dp_dpdk *d, const struct rte_eth_dev_info *di, struct sl_error *err)
{
        const unsigned nq = d->cfg.n_queues;
        struct rte_eth_conf pc;
        int r;

        memset(&pc, 0, sizeof(pc));
        if (di->max_rx_queues < nq || di->max_tx_queues < nq)
                return sl_errorf(err, -EINVAL,
                                 "dpdk: %s takes %u rx / %u tx queues, [dpdk] queues is %u (net_af_packet: add "
                                 "qpairs=%u to the device)", d->port_name, di->max_rx_queues, di->max_tx_queues, nq, nq);
        if (nq > 1 && di->flow_type_rss_offloads) {
                pc.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
                pc.rx_adv_conf.rss_conf.rss_hf =
                        di->flow_type_rss_offloads & (RTE_ETH_RSS_IPV4 | RTE_ETH_RSS_NONFRAG_IPV4_UDP);
                d->rss = true;
        }
        d->rx_off = di->rx_offload_capa & (RTE_ETH_RX_OFFLOAD_IPV4_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM);
        d->tx_off = di->tx_offload_capa & (RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM);
        if (d->cfg.gpudirect)
                d->rx_off |= RTE_ETH_RX_OFFLOAD_BUFFER_SPLIT;
        pc.rxmode.offloads = d->rx_off;
        pc.txmode.offloads = d->tx_off;
        d->txf = (d->tx_off & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM ? DPK_TXF_IP_OFFLOAD : 0) |
                 (d->tx_off & RTE_ETH_TX_OFFLOAD_UDP_CKSUM ? DPK_TXF_UDP_OFFLOAD : 0);
        if ((r = rte_eth_dev_configure(d->port, (uint16_t)nq, (uint16_t)nq, &pc)) < 0)
                return sl_errorf(err, r, "dpdk: configuring %s: %s", d->port_name, rte_strerror(-r));
        uint16_t rxd = (uint16_t)(d->cfg.rx_desc ? d->cfg.rx_desc : 1024);
        uint16_t txd = (uint16_t)(d->cfg.tx_desc ? d->cfg.tx_desc : 1024);
        if ((r = rte_eth_dev_adjust_nb_rx_tx_desc(d->port, &rxd, &txd)) < 0)
                return sl_errorf(err, r, "dpdk: descriptor counts for %s: %s", d->port_name, rte_strerror(-r));
        int sock = rte_eth_dev_socket_id(d->port);
        for (unsigned q = 0; q < nq; q++) {
                struct rte_eth_rxconf rc = di->default_rxconf;
                union rte_eth_rxseg seg[2];
                rc.offloads = d->rx_off;
                if (d->payload_pool) {
                        /* Ethernet + IPv4 + UDP headers to host memory, the datagram to the GPU */
                        memset(seg, 0, sizeof(seg));
                        seg[0].split.mp = d->pool;
                        seg[0].split.length = DPK_HDRS;
                        seg[1].split.mp = d->payload_pool;
                        seg[1].split.length = 0;
                        rc.rx_seg = seg;
                        rc.rx_nseg = 2;
                }
                r = rte_eth_rx_queue_setup(d->port, (uint16_t)q, rxd, sock < 0 ? SOCKET_ID_ANY : (unsigned)sock, &rc,
                                           d->payload_pool ? NULL : d->pool);
                if (r < 0)
                        return sl_errorf(err, r, "dpdk: rx queue %u of %s: %s", q, d->port_name, rte_strerror(-r));
                struct rte_eth_txconf tc = di->default_txconf;
                tc.offloads = d->tx_off;
                r = rte_eth_tx_queue_setup(d->port, (uint16_t)q, txd, sock < 0 ? SOCKET_ID_ANY : (unsigned)sock, &tc);
                if (r < 0)
                        return sl_errorf(err, r, "dpdk: tx queue %u of %s: %s", q, d->port_name, rte_strerror(-r));
        }
        if ((r = rte_eth_dev_start(d->port)) < 0)
                return sl_errorf(err, r, "dpdk: starting %s: %s", d->port_name, rte_strerror(-r));
        d->started_port = true;
        struct rte_ether_addr mac;
        if ((r = rte_eth_macaddr_get(d->port, &mac)) < 0)
                return sl_errorf(err, r, "dpdk: MAC address of %s: %s", d->port_name, rte_strerror(-r));
        memcpy(d->ifc.mac, mac.addr_bytes, 6);
        return 0;
}

/* ---- lifecycle ---- */

int dp_dpdk_create(struct dp_dpdk **out, const struct dp_dpdk_config *cfg, struct sl_error *err)
{
        struct dp_dpdk *d;
        struct rte_eth_dev_info di;
        int r;

        *out = NULL;
        if (g_live)
                return sl_errorf(err, -EBUSY, "dpdk: one DPDK transport per process");
        if (!cfg->port || !cfg->port[0] || !cfg->ip || cfg->n_queues < 1 || cfg->n_queues > DP_DPDK_MAX_LCORES ||
            cfg->prefix_len < 1 || cfg->prefix_len > 32 || !cfg->udp_port)
                return sl_errorf(err, -EINVAL, "dpdk: a port, an IPv4 address/prefix, a UDP port and 1..%d queues are needed",
                                 DP_DPDK_MAX_LCORES);
        for (unsigned q = 0; q < cfg->n_queues; q++)
                if (!cfg->req_ring[q] || !cfg->resp_ring[q])
                        return sl_errorf(err, -EINVAL, "dpdk: queue %u has no rings", q);
        d = calloc(1, sizeof(*d));
        if (!d)
                return sl_errorf(err, -ENOMEM, "dpdk: out of memory");
        d->cfg = *cfg;
        if (!d->cfg.mbufs)
                d->cfg.mbufs = 8192;
        d->ifc.ip = cfg->ip;
        d->ifc.mask = cfg->prefix_len == 32 ? 0xffffffffu : ~(0xffffffffu >> cfg->prefix_len);
        d->ifc.port = cfg->udp_port;
        if ((r = eal_start(&d->cfg, err)) < 0)
                goto fail;
        if ((r = find_port(d, err)) < 0)
                goto fail;
        rte_eth_dev_get_name_by_port(d->port, d->port_name);
        if ((r = rte_eth_dev_info_get(d->port, &di)) < 0) {
                sl_errorf(err, r, "dpdk: port %u info: %s", d->port, rte_strerror(-r));
                goto fail;
        }
        snprintf(d->driver, sizeof(d->driver), "%s", di.driver_name ? di.driver_name : "?");

        /* dataplane lcores: the ones asked for, or the first workers */
        unsigned lc[DP_DPDK_MAX_LCORES], n = 0, l;
        bool given = false;
        for (unsigned q = 0; q < cfg->n_queues; q++)
                given |= cfg->lcores[q] != 0;
        if (given) {
                for (n = 0; n < cfg->n_queues; n++) {
                        l = cfg->lcores[n];
                        if (!rte_lcore_is_enabled(l) || l == rte_get_main_lcore()) {
                                r = sl_errorf(err, -EINVAL, "dpdk: lcore %u is not a worker lcore of EAL (-l in eal_args)", l);
                                goto fail;
                        }
                        lc[n] = l;
                }
        } else {
                RTE_LCORE_FOREACH_WORKER(l) {
                        if (n < cfg->n_queues)
                                lc[n++] = l;
                }
                if (n < cfg->n_queues) {
                        r = sl_errorf(err, -EINVAL,
                                      "dpdk: %u queues need %u worker lcores and EAL has %u: give eal_args -l the main "
                                      "lcore plus one per queue (e.g. -l 0-%u)", cfg->n_queues, cfg->n_queues, n,
                                      cfg->n_queues);
                        goto fail;
                }
        }
        if ((r = memory_setup(d, &di, err)) < 0)
                goto fail;
        if ((r = port_setup(d, &di, err)) < 0)
                goto fail;
        d->lq = aligned_alloc(64, SL_ALIGN_UP(sizeof(*d->lq) * cfg->n_queues, 64));
        if (!d->lq) {
                r = sl_errorf(err, -ENOMEM, "dpdk: out of memory");
                goto fail;
        }
        memset(d->lq, 0, sizeof(*d->lq) * cfg->n_queues);
        for (unsigned q = 0; q < cfg->n_queues; q++) {
                struct lcore_q *lq = &d->lq[q];
                struct dp_transport_config tc = cfg->tc;
                lq->d = d;
                lq->q = q;
                lq->lcore = lc[q];
                lq->ip_id = (uint16_t)(q << 12);
                tc.index = cfg->index[q];
                tc.req_ring = cfg->req_ring[q];
                tc.resp_ring = cfg->resp_ring[q];
                struct dpu_io io = {.ctx = lq, .tx_get = io_tx_get, .tx_put = io_tx_put, .tx_send = io_tx_send,
                                    .push = io_push};
                if ((r = dpu_init(&lq->core, &tc, &io, err)) < 0) {
                        sl_error_prefix(err, r, "dpdk queue %u", q);
                        goto fail;
                }
        }
        g_live = d;
        *out = d;
        return 0;
fail:
        dp_dpdk_free(d);
        return r;
}

int dp_dpdk_start(struct dp_dpdk *d, struct sl_error *err)
{
        for (unsigned q = 0; q < d->cfg.n_queues; q++) {
                int r = rte_eal_remote_launch(lcore_main, &d->lq[q], d->lq[q].lcore);
                if (r < 0) {
                        dp_dpdk_stop(d);
                        return sl_errorf(err, r, "dpdk: launching lcore %u: %s", d->lq[q].lcore, rte_strerror(-r));
                }
        }
        d->launched = true;
        return 0;
}

void dp_dpdk_stop(struct dp_dpdk *d)
{
        if (!d || !d->lq)
                return;
        atomic_store(&d->stop, true);
        for (unsigned q = 0; q < d->cfg.n_queues; q++)
                if (rte_eal_get_lcore_state(d->lq[q].lcore) != WAIT)
                        rte_eal_wait_lcore(d->lq[q].lcore);
        d->launched = false;
}

void dp_dpdk_free(struct dp_dpdk *d)
{
        if (!d)
                return;
        dp_dpdk_stop(d);
        if (d->started_port) {
                rte_eth_dev_stop(d->port);
                rte_eth_dev_close(d->port);
        }
        if (d->lq)
                for (unsigned q = 0; q < d->cfg.n_queues; q++)
                        dpu_destroy(&d->lq[q].core);
        free(d->lq);
        /* buffers the engine still holds go with the pool: the process is ending */
        rte_mempool_free(d->payload_pool);
        rte_mempool_free(d->pool);
        if (d->dpdk_registered)
                rte_extmem_unregister(d->area, d->area_len);
        const struct dp_host_mem_ops *mo = d->cfg.mem;
        if (d->dev_area && mo && mo->free_device) {
                rte_extmem_unregister(d->dev_area, d->dev_area_len);
                mo->free_device(mo->user, d->dev_area);
        }
        if (d->host_registered && mo && mo->unregister_host)
                mo->unregister_host(mo->user, d->area);
        if (d->area)
                munmap(d->area, d->area_len);
        if (g_live == d)
                g_live = NULL;
        free(d);
}

/* ---- observers ---- */

unsigned dp_dpdk_queues(const struct dp_dpdk *d) { return d->cfg.n_queues; }
unsigned dp_dpdk_lcore(const struct dp_dpdk *d, unsigned q) { return d->lq[q].lcore; }

void dp_dpdk_stats(const struct dp_dpdk *d, unsigned q, struct dp_dpdk_stats *out)
{
        const struct lcore_q *lq = &d->lq[q];
        const struct lq_stats *s = &lq->st;
#define LD(f) out->f = __atomic_load_n(&s->f, __ATOMIC_RELAXED)
        LD(rx_packets), LD(rx_bytes), LD(tx_packets), LD(tx_bytes);
        for (unsigned i = 0; i < DP_DPDK_DROP_N; i++)
                LD(drops[i]);
        LD(arp_requests_rx), LD(arp_replies_rx), LD(arp_replies_tx), LD(arp_requests_tx), LD(icmp_echo);
        LD(prompts_zero_copy), LD(prompts_copied), LD(polls), LD(idle_polls);
#undef LD
        dpu_stats(&lq->core, &out->proto);
}

void dp_dpdk_port_drops(const struct dp_dpdk *d, uint64_t *imissed, uint64_t *ierrors, uint64_t *nombuf)
{
        struct rte_eth_stats s;
        memset(&s, 0, sizeof(s));
        rte_eth_stats_get(d->port, &s);
        *imissed = s.imissed, *ierrors = s.ierrors, *nombuf = s.rx_nombuf;
}

int dp_dpdk_describe(const struct dp_dpdk *d, char *buf, size_t cap)
{
        const uint8_t *m = d->ifc.mac;
        char lcs[64];
        size_t o = 0;
        for (unsigned q = 0; q < d->cfg.n_queues && o < sizeof(lcs); q++)
                o += (size_t)snprintf(lcs + o, sizeof(lcs) - o, "%s%u", q ? "," : "", d->lq[q].lcore);
        const char *mem = d->host_registered ? "registered with CUDA (mapped pinned host memory)"
                                             : "pinned host memory (mlock; no CUDA registration in this build)";
        return snprintf(buf, cap,
                        "port %u %s (%s) %02x:%02x:%02x:%02x:%02x:%02x, %u queue(s) on lcore(s) %s%s, offloads rx %s%s "
                        "tx %s%s; %u buffers in %zu KiB of external memory, %s, rte_dev_dma_map %s%s",
                        d->port, d->port_name, d->driver, m[0], m[1], m[2], m[3], m[4], m[5], d->cfg.n_queues, lcs,
                        d->rss ? " with RSS" : "", d->rx_off & RTE_ETH_RX_OFFLOAD_IPV4_CKSUM ? "ip " : "",
                        d->rx_off & RTE_ETH_RX_OFFLOAD_UDP_CKSUM ? "udp" : (d->rx_off ? "" : "none"),
                        d->tx_off & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM ? "ip " : "",
                        d->tx_off & RTE_ETH_TX_OFFLOAD_UDP_CKSUM ? "udp" : (d->tx_off ? "" : "none"), d->cfg.mbufs,
                        d->area_len / 1024, mem, d->dma_mapped ? "accepted" : "not supported by the device",
                        d->payload_pool ? "; GPUDirect payload pool with header/data split" : "");
}

int dp_dpdk_locate(const void *p, struct dp_dpdk_where *w)
{
        const struct dp_dpdk *d = g_live;
        memset(w, 0, sizeof(*w));
        if (!d)
                return -ENOENT;
        const uint8_t *b = p;
        if (b < d->area + IP_ALIGN || b >= d->area + d->area_len)
                return 0;
        size_t off = (size_t)(b - (d->area + IP_ALIGN));
        w->in_pool = true;
        w->buffer = (uint32_t)(off / ELT);
        /* receive frames start at the default headroom, where every PMD puts them */
        w->frame_off = (uint32_t)(off % ELT) - RTE_PKTMBUF_HEADROOM;
        const struct rte_memseg_list *msl = rte_mem_virt2memseg_list(p);
        w->dpdk_registered = msl && msl->external;
        w->locked = d->locked;
        w->host_registered = d->host_registered;
        if (d->host_registered && d->area_dev)
                w->device_ptr = (uint8_t *)d->area_dev + (b - d->area);
        return 0;
}

/* ---- benchmark entry ---- */

void dp_dpdk_bench_rx(struct dp_dpdk *d, unsigned q, void **pkts, unsigned n)
{
        struct lcore_q *lq = &d->lq[q];
        uint64_t now = sl_now_ns();
        for (unsigned i = 0; i < n; i++)
                rx_one(lq, pkts[i], now);
        tx_flush(lq);
}

void *dp_dpdk_bench_pool(struct dp_dpdk *d) { return d->pool; }

void dp_dpdk_bench_reset(struct dp_dpdk *d, unsigned q) { dpu_reset(&d->lq[q].core); }
