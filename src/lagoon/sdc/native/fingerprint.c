/* lagoon SDC fingerprint: the CPU fast path of lagoon.sdc.fingerprint (see that module for the spec).
 *
 * A tensor's bytes are read as little-endian 32-bit words, arranged in rows of ROW_WORDS words (the last
 * row zero-padded). Every word w is mixed by h = fmix32(w ^ seed) (MurmurHash3's finalizer, Appleby
 * 2008: a bijection on 32-bit words with full avalanche). For each lane l:
 *
 *     S_l(r) = sum_c h[r][c] * W_l(c)      (mod 2^32)      W_l(c) odd, given in `col_weights`
 *     D_l    = sum_r S_l(r) * G_l(r)       (mod 2^32)      G_l(r) = fmix32(r ^ row_keys[l]) | 1
 *
 * Unsigned 32-bit arithmetic wraps by definition in C, and sums mod 2^32 do not depend on their order,
 * so the result is the same for any number of threads and equals the Python reference bit for bit.
 * Threads are plain pthreads (no OpenMP runtime to clash with torch's).
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ROW_WORDS 1024
#define MAX_LANES 8
#define MAX_THREADS 256
/* Below this many rows a tensor is digested on one thread: starting threads would cost more. */
#define PARALLEL_ROWS 256

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

typedef struct {
    const uint8_t *data;
    uint64_t nbytes;
    int lanes;
    const uint32_t *col_weights; /* [lanes][ROW_WORDS] */
    const uint32_t *row_keys;    /* [lanes] */
    uint32_t seed;
    uint64_t row_begin, row_end;
    uint32_t acc[MAX_LANES];
} Job;

/* Accumulate rows [row_begin, row_end) of one tensor into job->acc. */
static void digest_rows(Job *job) {
    uint32_t words[ROW_WORDS];
    uint32_t mixed[ROW_WORDS];
    const uint64_t full_rows = job->nbytes / (4 * ROW_WORDS);
    const int aligned = ((uintptr_t)job->data % 4) == 0;
    for (int l = 0; l < job->lanes; l++) job->acc[l] = 0;
    for (uint64_t r = job->row_begin; r < job->row_end; r++) {
        const uint8_t *row = job->data + r * 4 * ROW_WORDS;
        const uint32_t *w;
        if (r < full_rows && aligned) {
            w = (const uint32_t *)row;
        } else { /* the zero-padded last row, or an unaligned tensor */
            uint64_t available = r < full_rows ? 4 * ROW_WORDS : job->nbytes - r * 4 * ROW_WORDS;
            memset(words, 0, sizeof(words));
            memcpy(words, row, available);
            w = words;
        }
        const uint32_t seed = job->seed;
        for (int c = 0; c < ROW_WORDS; c++) mixed[c] = fmix32(w[c] ^ seed);
        for (int l = 0; l < job->lanes; l++) {
            const uint32_t *weights = job->col_weights + (size_t)l * ROW_WORDS;
            uint32_t sum = 0;
            for (int c = 0; c < ROW_WORDS; c++) sum += mixed[c] * weights[c];
            job->acc[l] += sum * (fmix32((uint32_t)r ^ job->row_keys[l]) | 1u);
        }
    }
}

static void *run_job(void *arg) {
    digest_rows((Job *)arg);
    return NULL;
}

/* Digest of one tensor into out[lanes], on up to `threads` threads. */
static void digest_tensor(const uint8_t *data, uint64_t nbytes, int lanes, const uint32_t *col_weights,
                          const uint32_t *row_keys, uint32_t seed, uint32_t *out, int threads) {
    const uint64_t rows = (nbytes + 4 * ROW_WORDS - 1) / (4 * ROW_WORDS);
    Job jobs[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS];
    if (threads < 1 || rows < PARALLEL_ROWS) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if ((uint64_t)threads > rows) threads = (int)(rows ? rows : 1);
    for (int t = 0; t < threads; t++) {
        jobs[t] = (Job){data, nbytes, lanes, col_weights, row_keys, seed, rows * t / threads, rows * (t + 1) / threads, {0}};
        started[t] = 0;
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&handles[t], NULL, run_job, &jobs[t]) == 0;
    digest_rows(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(handles[t], NULL);
        else digest_rows(&jobs[t]); /* could not start a thread: do its share here */
    }
    for (int l = 0; l < lanes; l++) {
        uint32_t total = 0;
        for (int t = 0; t < threads; t++) total += jobs[t].acc[l];
        out[l] = total;
    }
}

/* Digests of `count` tensors: out[i * lanes + l] is lane l of tensor i. Returns 0, or -1 on bad arguments. */
int lagoon_sdc_digest_many(int count, const uint8_t *const *pointers, const uint64_t *nbytes, int lanes,
                           const uint32_t *col_weights, const uint32_t *row_keys, uint32_t seed, uint32_t *out,
                           int threads) {
    if (lanes < 1 || lanes > MAX_LANES || count < 0) return -1;
    for (int i = 0; i < count; i++)
        digest_tensor(pointers[i], nbytes[i], lanes, col_weights, row_keys, seed, out + (size_t)i * lanes, threads);
    return 0;
}

int lagoon_sdc_row_words(void) { return ROW_WORDS; }
