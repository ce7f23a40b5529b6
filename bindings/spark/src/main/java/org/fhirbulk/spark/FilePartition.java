package org.fhirbulk.spark;

import org.apache.spark.sql.connector.read.InputPartition;

/**
 * One manifest file: its index in the export's file list (the rest of what a task needs is in
 * the reader factory, sent once per stage rather than once per task).
 */
record FilePartition(int index, String kind, String resourceType) implements InputPartition {
    private static final long serialVersionUID = 1L;
}
