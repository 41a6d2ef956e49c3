import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.logging.Level;
import org.neo4j.logging.log4j.Log4jLogProvider;

/**
 * Runs embedded Neo4j Community with only the Bolt connector, for local development.
 *
 * Started by infra/stack.sh (compiled once with javac against the fetched jars):
 *   java -cp classes:jars/* Neo4jLauncher HOME_DIR LOGS_DIR BOLT_PORT READY_FILE
 *
 * - HOME_DIR holds data/ (databases + transaction logs), so data survives restarts.
 * - Authentication is on: user neo4j, whose password is set at every start from the
 *   environment (UDS3_NEO4J_PASSWORD; stack.sh passes the local stack's). Bolt is plain-text
 *   on 127.0.0.1 only: local use, never exposed.
 * - READY_FILE is written once the default database answers a query, and removed on
 *   shutdown; stack.sh uses it (plus a Bolt handshake) as the readiness signal.
 * - SIGTERM runs the shutdown hook, which shuts the DBMS down cleanly (checkpoint).
 * Page cache size comes from -Duds3.neo4j.pagecache=BYTES (default 256 MiB).
 */
public final class Neo4jLauncher {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: Neo4jLauncher HOME_DIR LOGS_DIR BOLT_PORT READY_FILE");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        Path logs = Path.of(args[1]).toAbsolutePath();
        int port = Integer.parseInt(args[2]);
        Path ready = Path.of(args[3]).toAbsolutePath();
        long pagecache = Long.getLong("uds3.neo4j.pagecache", 256L * 1024 * 1024);
        String password = System.getenv("UDS3_NEO4J_PASSWORD");
        if (password == null || password.length() < 8) {
            System.err.println("Neo4jLauncher: set UDS3_NEO4J_PASSWORD (at least 8 characters)");
            System.exit(2);
        }
        Files.deleteIfExists(ready);

        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setConfig(GraphDatabaseSettings.logs_directory, logs)
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.pagecache_memory, pagecache)
                .setConfig(GraphDatabaseSettings.udc_enabled, false) // no usage reports
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.DISABLED)
                .setConfig(HttpConnector.enabled, false)
                // Bolt waits 5 s for connections and 5 s for its thread pool on shutdown;
                // 1 s each is plenty for a local dev server and makes `stack.sh down` quick
                .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofSeconds(1))
                .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofSeconds(1))
                // the user log (what neo4j.log would hold in a server install) goes to stdout,
                // which stack.sh redirects to LOGS_DIR/neo4j.out
                .setUserLogProvider(new Log4jLogProvider(System.out, Level.INFO))
                .build();

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("Neo4jLauncher: shutting down");
            try {
                Files.deleteIfExists(ready);
            } catch (Exception ignored) {
                // best effort: a stale ready file is also cleared on the next start
            }
            dbms.shutdown();
            System.out.println("Neo4jLauncher: stopped");
        }, "neo4j-shutdown"));

        GraphDatabaseService db = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
        if (!db.isAvailable(TimeUnit.MINUTES.toMillis(2))) {
            System.err.println("Neo4jLauncher: default database not available after 2 minutes");
            System.exit(1);
        }
        try {  // the embedded API is not subject to auth: it sets the password Bolt clients must give
            dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME).executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED",
                    java.util.Map.of("password", password));
        } catch (RuntimeException e) {
            if (!String.valueOf(e.getMessage()).contains("cannot be the same")) {
                throw e;  // anything but "already this password"
            }
        }
        String components = db.executeTransactionally(
                "CALL dbms.components() YIELD name, versions, edition "
                        + "RETURN name + ' ' + versions[0] + ' ' + edition AS c",
                java.util.Map.of(),
                r -> r.hasNext() ? (String) r.next().get("c") : "?");
        Files.writeString(ready, components + "\n");
        System.out.println("Neo4jLauncher: ready: " + components + ", bolt://127.0.0.1:" + port);

        // Neo4j's own threads keep the JVM alive; just park the main thread.
        Thread.sleep(Duration.ofDays(36500).toMillis());
    }
}
