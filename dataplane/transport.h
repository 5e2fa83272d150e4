/* transport.h — internal to dataplane/: helpers udp.c and tcp.c share. */
#pragma once

#include <sys/socket.h>

#include "dataplane.h"

#define DPT_STAT(s, f, n) atomic_fetch_add_explicit((_Atomic uint64_t *)&(s)->f, (n), memory_order_relaxed)

int dpt_listen_socket(const char *addr, int type, struct sockaddr_storage *bound, unsigned *blen,
                      struct sl_error *err);
void dpt_load(const struct dp_transport_config *cfg, struct dp_load *l);
void dpt_fill_info(const struct dp_transport_config *cfg, struct dp_info *info, uint32_t max_frame,
                   uint32_t lease_ms);
long dpt_error_frame(void *buf, size_t cap, uint16_t hflags, uint64_t rid, uint32_t seq, int code,
                     bool terminal, uint32_t detail, const char *msg);
