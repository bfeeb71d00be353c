/* service/progress.c — see progress.h. */
#include "service/progress.h"

#include <time.h>

#define BAR_WIDTH 24
#define BAR_EVERY_NS 100000000LL /* a bar redrawn faster flickers and costs a write each time */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void svc_progress_start(svc_progress *p, FILE *to, int bar, double every_s, int64_t total, int64_t req0,
                        int64_t unit0)
{
    *p = (svc_progress){.to = to, .bar = bar, .every_s = every_s > 0 ? every_s : 10, .total = total,
                        .t0_ns = now_ns(), .req0 = req0, .unit0 = unit0};
    p->last_ns = p->t0_ns;
}

static void eta_text(char *out, size_t cap, double secs)
{
    if (secs < 0 || secs > 1e7) {
        snprintf(out, cap, "--:--");
        return;
    }
    long s = (long)(secs + 0.5);
    if (s >= 3600)
        snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(out, cap, "%ld:%02ld", s / 60, s % 60);
}

void svc_progress_update(svc_progress *p, int64_t reqs, int64_t units, int64_t bad, int final)
{
    if (!p->to)
        return;
    int64_t t = now_ns();
    int64_t gap = p->bar ? BAR_EVERY_NS : (int64_t)(p->every_s * 1e9);
    if (!final && t - p->last_ns < gap)
        return;
    p->last_ns = t;
    double el = (double)(t - p->t0_ns) * 1e-9, rate = el > 0 ? (double)(reqs - p->req0) / el : 0;
    double frac = p->total > 0 ? (double)units / (double)p->total : -1;
    double unit_rate = el > 0 ? (double)(units - p->unit0) / el : 0;
    char eta[32] = "", pct[16] = "";
    if (frac >= 0) {
        eta_text(eta, sizeof eta, unit_rate > 0 ? (double)(p->total - units) / unit_rate : -1);
        snprintf(pct, sizeof pct, "%3.0f%%", 100 * (frac > 1 ? 1 : frac));
    }
    if (p->bar) {
        char bar[BAR_WIDTH + 1];
        int fill = frac >= 0 ? (int)(frac * BAR_WIDTH + 0.5) : 0;
        for (int i = 0; i < BAR_WIDTH; i++)
            bar[i] = frac < 0 ? (i == (int)(el * 4) % BAR_WIDTH ? '#' : '.') : i < fill ? '#' : ' ';
        bar[BAR_WIDTH] = '\0';
        fprintf(p->to, "\r%s [%s] %lld requests  %.0f/s%s%s  %lld bad\033[K%s", pct, bar, (long long)reqs, rate,
                eta[0] ? "  ETA " : "", eta, (long long)bad, final ? "\n" : "");
    } else {
        fprintf(p->to, "rescore: %lld requests%s%s%s, %.0f/s%s%s, %lld bad\n", (long long)reqs, pct[0] ? " (" : "",
                pct, pct[0] ? ")" : "", rate, eta[0] ? ", ETA " : "", eta, (long long)bad);
    }
    fflush(p->to);
    p->drawn = 1;
}
