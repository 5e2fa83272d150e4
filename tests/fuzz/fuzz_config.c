/* fuzz_config — libFuzzer target for the sluice.conf parser (control/config.c over
 * libinih): parse, cross-key checks, reload diff against the defaults, and the same bytes
 * as a command-line override. Built and run by tests/fuzz/run config. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static struct ctl_config def, cfg, ov;
        struct sl_error err;
        char buf[256];

        ctl_config_defaults(&def);
        cfg = def;
        if (ctl_config_parse_string("fuzz.conf", (const char *)data, size, &cfg, &err) == 0) {
                ctl_config_validate(&cfg, &err);
                ctl_config_diff_reloadable(&def, &cfg, &err);
                ctl_config_changed_keys(&def, &cfg, buf, sizeof(buf));
                ctl_config_changed_keys(&def, &cfg, buf, 8);
        }
        err.msg[sizeof(err.msg) - 1] = 0;
        if (strlen(err.msg) >= sizeof(err.msg))
                abort();

        /* The input, up to its first NUL, as section.key=value. */
        char *s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = 0;
        ov = def;
        if (ctl_config_apply_override(&ov, s, &err) == 0)
                ctl_config_validate(&ov, &err);
        free(s);
        return 0;
}
