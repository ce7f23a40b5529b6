package org.fhirbulk;

import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.ParameterContext;
import org.junit.jupiter.api.extension.ParameterResolver;

/**
 * Injects one shared {@link Sandbox} (started on first use, stopped when the test run ends) into
 * test and lifecycle method parameters: {@code @ExtendWith(SandboxExtension.class)}.
 */
public final class SandboxExtension implements ParameterResolver {
    /** Small enough to be quick, large enough for several files per type. */
    static final int PATIENTS = 120;
    static final int RECORDS_PER_FILE = 100;

    private static final class Resource implements ExtensionContext.Store.CloseableResource {
        final Sandbox sandbox;

        Resource(Sandbox sandbox) {
            this.sandbox = sandbox;
        }

        @Override
        public void close() {
            sandbox.close();
        }
    }

    @Override
    public boolean supportsParameter(ParameterContext pc, ExtensionContext ec) {
        return pc.getParameter().getType() == Sandbox.class;
    }

    @Override
    public Object resolveParameter(ParameterContext pc, ExtensionContext ec) {
        ExtensionContext.Store store = ec.getRoot().getStore(ExtensionContext.Namespace.GLOBAL);
        return store.getOrComputeIfAbsent("fhirbulk-sandbox", k -> {
            try {
                return new Resource(Sandbox.start(PATIENTS, RECORDS_PER_FILE));
            } catch (Exception e) {
                throw new IllegalStateException("cannot start the sandbox", e);
            }
        }, Resource.class).sandbox;
    }
}
