# flashgate's container image, built by docker-compose.yml (`docker compose
# up --build`). Defaults are compiled in; configure with FLASHGATE_* variables.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin flashgate

FROM debian:bookworm-slim
RUN useradd --system --no-create-home flashgate
COPY --from=build /src/target/release/flashgate /usr/local/bin/flashgate
USER flashgate
# 8080: the API (http.listen); 9091: metrics only (metrics.listen).
EXPOSE 8080 9091
ENTRYPOINT ["flashgate"]
CMD ["serve"]
