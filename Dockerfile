# flashgate's container image, built by docker-compose.yml (`docker compose
# up --build`). Defaults are compiled in; configure with FLASHGATE_* variables.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: a change to flashgate's code
# rebuilds only flashgate. Every target the manifest declares gets an empty
# stand-in so that cargo accepts it.
COPY Cargo.toml Cargo.lock ./
COPY crates/flashgate-dev/Cargo.toml crates/flashgate-dev/
RUN mkdir -p src tests/api benches crates/flashgate-dev/src crates/flashgate-dev/tests \
    && touch src/lib.rs crates/flashgate-dev/src/lib.rs \
    && for f in src/main.rs tests/api/main.rs benches/journal.rs benches/reserve_script.rs \
        crates/flashgate-dev/src/main.rs crates/flashgate-dev/tests/demo.rs; do echo 'fn main() {}' > "$f"; done \
    && cargo build --release --locked -p flashgate --bin flashgate \
    && rm -rf src tests benches crates
COPY . .
# The stand-ins' build left newer outputs than the real sources' dates.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked -p flashgate --bin flashgate

FROM debian:bookworm-slim
# A fixed numeric user, so runtimes that check for non-root (runAsNonRoot)
# can tell without a passwd lookup.
RUN useradd --system --no-create-home --uid 10001 --user-group flashgate
COPY --from=build /src/target/release/flashgate /usr/local/bin/flashgate
USER 10001:10001
# 8080: the API (http.listen); 9091: metrics only (metrics.listen).
EXPOSE 8080 9091
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=12 \
    CMD ["flashgate", "healthcheck", "--probe", "readyz"]
ENTRYPOINT ["flashgate"]
CMD ["serve"]
