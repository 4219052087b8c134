// llama-logprobs MODEL.gguf ROWS.txt [THREADS]
//
// Per-token log-likelihoods of given token rows under llama.cpp: what `score` computes, so the
// project can check that an exported GGUF scores what the pruned model scores.
// ROWS.txt holds one row of token ids per line (space separated, at least 2 tokens). For each
// row the model reads tokens[0..n-2] in one batch (a fresh KV cache per row) and the program
// prints one line: log p(tokens[i+1] | tokens[0..i]) for i = 0..n-2.
// K/V cache in float32 and no flash attention: scoring precision over speed.

#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf ROWS.txt [THREADS]\n", argv[0]);
        return 2;
    }
    const int threads = argc > 3 ? atoi(argv[3]) : 2;
    std::vector<std::vector<llama_token>> rows;
    std::ifstream in(argv[2]);
    size_t longest = 0;
    for (std::string line; std::getline(in, line);) {
        std::istringstream ids(line);
        std::vector<llama_token> row;
        for (long id; ids >> id;) {
            row.push_back((llama_token) id);
        }
        if (row.size() < 2) {
            fprintf(stderr, "every row needs at least 2 tokens\n");
            return 2;
        }
        longest = row.size() > longest ? row.size() : longest;
        rows.push_back(row);
    }

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (model == nullptr) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params params = llama_context_default_params();
    params.n_ctx = params.n_batch = params.n_ubatch = (uint32_t) longest;
    params.n_threads = params.n_threads_batch = threads;
    params.type_k = params.type_v = GGML_TYPE_F32;
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, params);
    if (ctx == nullptr) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_batch batch = llama_batch_init((int32_t) longest, 0, 1);

    for (const auto & row : rows) {
        const int n = (int) row.size() - 1;  // tokens read
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = n;
        for (int i = 0; i < n; ++i) {
            batch.token[i] = row[i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        for (int i = 0; i < n; ++i) {
            const float * logits = llama_get_logits_ith(ctx, i);
            double top = logits[0];
            for (int v = 1; v < n_vocab; ++v) {
                top = logits[v] > top ? logits[v] : top;
            }
            double total = 0.0;
            for (int v = 0; v < n_vocab; ++v) {
                total += std::exp((double) logits[v] - top);
            }
            printf(i ? " %.9g" : "%.9g", (double) logits[row[i + 1]] - top - std::log(total));
        }
        printf("\n");
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
